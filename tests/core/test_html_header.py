"""The HTML report says what it shows: benchmark, run, dates, versions (a page saved on its own
must name its run)."""

from __future__ import annotations

import html
import re

from advbench import __version__
from advbench.store import open_store


def test_the_html_page_names_its_benchmark_run_dates_and_versions(tiny_run, advbench, tmp_path):
    result, root = tiny_run
    page_file = tmp_path / "report.html"
    rc, _, err = advbench("report", "--format", "html", "--out", page_file, "--store", root / "results.db",
                          "--cache-dir", root / "cache")
    assert rc == 0, err
    page = html.unescape(page_file.read_text())
    run = open_store(str(root / "results.db"), create=False).get_run(result.run_id)
    assert f"<title>advbench report — tiny, run {run.id}</title>" in page
    facts = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", page))
    assert facts["Benchmark"] == "tiny"
    assert facts["Run"] == f"{run.id} (ok), config {run.config_hash}, seed 0"
    assert facts["Started"] == f"{run.started_at:%Y-%m-%d %H:%M} UTC" and facts["Finished"].endswith(" UTC")
    assert facts["Versions"].startswith(f"advbench {run.advbench_version}, torch {run.torch_version}")
    assert facts["Generated"].startswith(f"advbench {__version__}, ") and facts["Store"].endswith("results.db")
