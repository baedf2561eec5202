"""The warning for image sets with few adversarial eval images (``advbench.report.coverage``), in
the run's output and the report's."""

from __future__ import annotations

from advbench import cli
from advbench.report import coverage

SPLIT = ("split", "d", "m", "", [("adversarial[pgd]", "eval", 0.0), ("adversarial[pgd]", "train", 9.0),
                                 ("adversarial[fgsm]", "eval", 31.0), ("normal", "eval", 60.0)])


def attack(label: str, success: float, stage: str = "attack"):
    return (stage, "d", "m", label, [("success", "", success), ("attempted", "", 60.0)])


def test_primary_attacks_count_their_eval_images_and_evaluation_sets_all_their_successes():
    cells = [attack("pgd", 9.0), attack("fgsm", 120.0), SPLIT, attack("fgsm-grid@0.05", 4.0),
             attack("eot-pgd@0.1>JPEG", 27.0, "adaptive")]
    assert coverage.eval_adversarial_counts(cells) == {
        ("d", "m", "pgd"): 0, ("d", "m", "fgsm"): 31, ("d", "m", "fgsm-grid@0.05"): 4, ("d", "m", "eot-pgd@0.1>JPEG"): 27}


def test_one_line_names_the_sets_with_few():
    cells = [SPLIT, attack("fgsm-grid@0.05", 4.0), attack("fgsm-grid@0.1", 30.0)]
    line = coverage.few_adversarial_warning(cells)
    assert "\n" not in line and line.startswith("warning: few adversarial eval images (< 10): pgd 0, fgsm-grid@0.05 4;")
    assert coverage.few_adversarial_warning([attack("fgsm-grid@0.1", 30.0)]) == ""


def test_run_and_report_print_it(tiny_run, capsys, monkeypatch, registry):
    result, root = tiny_run  # 40 images: 6 eval sources per set
    monkeypatch.setattr(cli, "discover", lambda: registry)
    counts = coverage.eval_adversarial_counts(coverage.from_outcomes(result.outcomes))
    assert counts and all(n < coverage.FEW for n in counts.values())
    assert cli.main(["report", "--store", result.store_url, "--table", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning: few adversarial eval images")] == [
        coverage.few_adversarial_warning(coverage.from_outcomes(result.outcomes))]
