"""What --help, --version and `advbench plugins` tell a user (issue 21, point 7)."""

from __future__ import annotations

import json

import pytest

from advbench import API_VERSION, __version__

COMMANDS = [["run"], ["validate"], ["report"], ["plot"], ["export"], ["plugins"], ["cache", "verify"],
            ["cache", "prune"], []]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) or "advbench" for c in COMMANDS])
def test_help_shows_no_bool_type_beside_flags_and_no_lost_brackets(advbench, command):
    rc, out, err = advbench(*command, "--help")
    assert rc == 0 and "Usage: advbench" in out
    assert "<bool>" not in out and "\x1b" not in out
    if command == ["export"]:
        assert "pip install 'advbench[parquet]'" in " ".join(out.split())  # rich markup ate "[parquet]"
    if command == ["run"]:
        assert '.[ray]' in out and "--fresh  " in out


def test_version(advbench):
    rc, out, err = advbench("--version")
    assert rc == 0 and out == f"advbench {__version__} (plugin API {API_VERSION})\n" and not err


def test_plugins_shows_what_attacks_and_transforms_declare(advbench):
    rc, out, _ = advbench("plugins", "--kind", "attack", "--json")
    declared = {p["name"]: p["declares"] for p in json.loads(out)}
    assert declared["fgsm"] == {"budget_param": "epsilons", "norm": "linf", "threat": "white-box",
                                "targeted": False, "adaptive": []}
    assert declared["eot-pgd"]["adaptive"] == ["operations", "detector", "pipeline"] and declared["spatial"]["budget_param"] == ""
    rc, out, _ = advbench("plugins", "--kind", "transform", "--json")
    jpeg = next(p for p in json.loads(out) if p["name"] == "jpeg")["declares"]
    assert jpeg["default_group"] == "jpeg" and 100 in jpeg["default_grid"]["quality"]
    rc, out, _ = advbench("plugins", "--kind", "attack")
    text = " ".join(out.split())
    assert rc == 0 and "budget: epsilons (linf); threat: white-box" in text and "threat: decision-based" in text
    rc, out, _ = advbench("plugins", "--kind", "transform")
    assert "group: jpeg; grid: quality = 100, 95," in " ".join(out.split())
