"""The adaptive-attack example of docs/threat-models.md runs and does what it says."""

import re
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parents[3] / "docs" / "threat-models.md"


def test_the_threat_model_page_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {}
        for block in blocks:  # the plugin module, then the script that tries it
            exec(compile(block, str(PAGE), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    fooled, kept = map(float, re.search(r"fooled ([\d.]+), label kept under every operation ([\d.]+)",
                                        capsys.readouterr().out).groups())
    assert 0 < kept <= fooled <= 1
    assert namespace["EOT_FGSM"].adaptive == ("operations",)
