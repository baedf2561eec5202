"""``advbench validate --estimate``: counting cells and passes (pure), FLOPs against a hand count,
each built-in attack's declared cost against the passes it really makes, and the command."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from advbench import estimate as E
from advbench.cli import main
from advbench.config import Entry, parse_benchmark
from advbench.criteria import PaperCriterion, target_labels
from advbench.stages import STAGES
from advbench.registry import discover
from advbench.specs import AttackContext, BuildContext, CostInputs, Defense
from advbench.execution.context import plan_for
from advbench.testing import (
    digits,
    registry_with,
    tiny_benchmark,
    tiny_model,
    variant_module,
)


def _grid_module():
    """FGSM under another name with a budget parameter, so the plan has evaluation sets."""
    return variant_module("attack", "fgsm", "fgsm-grid", budget_param="epsilons", norm="linf")


N = 30  # tiny_benchmark's images per model
ATTACKS = ['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5', 'plugin = "fgsm-grid"\nbudgets = [0.05, 0.3]']
ADAPTIVE = '[[adaptive]]\nplugin = "eot-pgd"\nbudgets = [0.1]\nsteps = 4\ntargets = [{ group = "JPEG" }]\n'


@pytest.fixture(scope="module")
def world():
    registry = registry_with(_grid_module())
    bench = parse_benchmark(tiny_benchmark(attacks=ATTACKS, detectors=['plugin = "lda"', 'plugin = "cnn-small"\nepochs = 3'],
                                           extra=ADAPTIVE), registry)
    plan = plan_for(bench, registry)
    inputs = CostInputs((3, 16, 16), 10)
    passes = {("testing-cnn", a.label): registry.get("attack", a.plugin).cost(a.params, inputs) for a in bench.attacks}
    for cell in plan.stage("adaptive"):
        eot = bench.adaptive[0]
        passes[("testing-cnn", cell.imageset)] = registry.get("attack", eot.plugin).cost(eot.params, dataclasses.replace(
            inputs, operations=E.adaptive_operations(plan, cell)))
    facts = E.Facts(
        classifier={"testing-cnn": "net"}, attack_passes=passes,
        detectors={("testing-cnn", "lda"): E.DetectorFacts("features"),
                   ("testing-cnn", "cnn-small"): E.DetectorFacts("images", "det", epochs=3, saves=False)},
        op_seconds={("testing-cnn", t.label): 0.001 for t in bench.transforms},
        op_scale={("testing-cnn", t.label): 1.0 for t in bench.transforms}, success_rate=0.5)
    networks = {"net": E.Network("net", (3, 16, 16), 32, 100.0, 100.0, (10, 20), cpu=E.Rates(0.01, 0.02, "given")),
                "det": E.Network("det", (3, 16, 16), 32, 10.0, 20.0, (10, 20), training=True,
                                 cpu=E.Rates(0.001, 0.002, "given"))}
    return bench, plan, facts, networks


def _cell_work(work, stage, imageset="", operation=""):
    return next(w for w in work if w.cell.stage == stage and (not imageset or w.cell.imageset == imageset)
                and (not operation or w.cell.operation == operation))


def test_the_estimate_counts_exactly_the_cells_of_the_plan(world):
    bench, plan, facts, networks = world
    est = E.summarize(E.count_work(plan, facts), networks, E.Hardware(gpus=0, cpus=2, cpu_threads=1), plan, facts)
    assert [s.stage for s in est.stages] == list(STAGES)
    assert {s.stage: s.cells for s in est.stages} == {s: len(plan.stage(s)) for s in STAGES}
    assert all(len(plan.stage(s)) for s in ("attack", "predict", "detect", "adaptive", "score"))


def test_attack_passes_follow_the_attack_parameters(world):
    bench, plan, facts, _ = world
    work = E.count_work(plan, facts)
    eval_share = bench.database.split[2]
    fgsm = _cell_work(work, "attack", "fgsm").passes[0]  # 8 budgets (the default sweep): a gradient and a check each
    assert (fgsm.forward, fgsm.backward) == (N * (8 * 2 + 2), N * 8)  # + the re-checks before and after saving
    bim = _cell_work(work, "attack", "bim").passes[0]  # 1 budget x (5 steps + a check)
    assert (bim.forward, bim.backward) == (N * (6 + 2), N * 5)
    grid = _cell_work(work, "attack", "fgsm-grid@0.3").passes[0]  # a budget point: the eval split only, one budget
    assert grid.forward == pytest.approx(N * eval_share * (2 + 2)) and grid.backward == pytest.approx(N * eval_share)
    eot = _cell_work(work, "adaptive").passes[0]  # the image and the group's 3 JPEG operations, 4 steps + a check
    assert eot.forward == pytest.approx(N * eval_share * (1 + 5 * 4 + 2)) and eot.backward == pytest.approx(N * eval_share * 4 * 4)


def test_predictions_and_detectors_see_the_expected_images(world):
    bench, plan, facts, _ = world
    work = E.count_work(plan, facts)
    train, dev, eval_share = bench.database.split
    assert _cell_work(work, "predict", "clean", "original").passes[0].forward == N
    jpeg = _cell_work(work, "predict", "fgsm", "jpeg@90")
    assert jpeg.passes[0].forward == N * 0.5 and jpeg.cpu_seconds == pytest.approx(N * 0.5 * 0.001)
    assert _cell_work(work, "predict", "fgsm-grid@0.3").passes[0].forward == pytest.approx(N * eval_share * 0.5)
    images = N + 2 * N * 0.5  # clean + the two primary attacks' successes
    detect = next(w for w in work if w.cell.stage == "detect" and w.cell.detector == "cnn-small")
    assert detect.passes[0].backward == pytest.approx(3 * train * images)
    assert detect.passes[0].forward == pytest.approx(3 * (train + dev) * images + images)
    assert not next(w for w in work if w.cell.stage == "detect" and w.cell.detector == "lda").passes
    score = next(w for w in work if w.cell.stage == "score" and w.cell.detector == "cnn-small"
                 and w.cell.imageset == "fgsm-grid@0.3")
    # its eval images, and a refit: the plugin cannot save a fitted detector
    assert sum(p.forward for p in score.passes) == pytest.approx(N * eval_share * 0.5 + detect.passes[0].forward)


def test_wall_time_on_cpus_and_on_gpus(world):
    bench, plan, facts, networks = world
    work = E.count_work(plan, facts)
    cpu = E.summarize(work, networks, E.Hardware(gpus=0, cpus=4, cpu_threads=1), plan, facts)
    predict = [w for w in work if w.cell.stage == "predict"]
    expected = (sum(p.forward * 0.01 for w in predict for p in w.passes) + sum(w.cpu_seconds for w in predict)) / 4
    assert next(s for s in cpu.stages if s.stage == "predict").seconds == pytest.approx(expected)
    hw = E.Hardware(gpus=2, cpus=4, cpu_threads=1, gpu_tflops=1e-9, gpu_launch_us=0.0)  # 1,000 FLOP/s
    gpu = E.summarize(work, networks, hw, plan, facts)
    attacks = [w for w in work if w.cell.stage == "attack"]
    per_cell = [sum((p.forward * 100 + p.backward * 100) / 1000 for p in w.passes) for w in attacks]
    assert next(s for s in gpu.stages if s.stage == "attack").seconds == pytest.approx(max(sum(per_cell) / 2, max(per_cell)))
    assert next(s for s in gpu.stages if s.stage == "attack").flops == pytest.approx(sum(per_cell) * 1000)


def test_flops_of_a_tiny_network_match_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    conv = 2 * (4 * 8 * 8) * (3 * 3 * 3)  # a multiply and an add per weight per output value
    linear = 2 * (4 * 8 * 8) * 10
    forward, backward, _ = E.count_flops(net, (3, 8, 8), batch=4)
    assert forward == conv + linear
    assert backward == conv + linear  # input gradients only: one product per layer
    _, training, _ = E.count_flops(net, (3, 8, 8), batch=4, training=True)
    assert training == 2 * (conv + linear) - conv  # weight gradients too; none for the input of the first layer
    assert all(p.requires_grad for p in net.parameters())  # counted on a copy


class _Counted(nn.Module):
    """Counts the images that pass through ``net`` forward, and backward."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.forward_rows, self.backward_rows = net, 0, 0
        counter = self

        class Count(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                counter.forward_rows += len(x)
                return x.clone()

            @staticmethod
            def backward(ctx, grad):
                counter.backward_rows += len(grad)
                return grad

        self.count = Count

    def forward(self, x):
        return self.net(self.count.apply(x))


OBLIVIOUS = {"fgsm": {"epsilons": [0.01, 0.1, 0.3]}, "gradient": {"epsilons": [0.01, 0.1]},
             "pgd": {"epsilons": [0.01, 0.05], "steps": 3}, "bim": {"epsilons": [0.01], "steps": 4},
             "l1-iter": {"epsilons": [0.01], "steps": 2}, "l2-iter": {"epsilons": [0.01], "steps": 2},
             "deepfool": {"steps": 3, "candidates": 4}, "newtonfool": {"steps": 3},
             "cw": {"binary_search_steps": 2, "steps": 3}, "lbfgs": {"binary_search_steps": 2, "max_iterations": 3},
             "jsma": {"max_iterations": 3}, "adef": {"max_iterations": 3, "candidates": 2},
             "square-linf": {"max_queries": 20}, "square-l2": {"max_queries": 20}, "spatial": {"n_angles": 3, "n_shifts": 2},
             "hopskipjump": {"max_queries": 40, "steps": 2, "initial_gradient_eval_steps": 5, "max_gradient_eval_steps": 10},
             "hopskipjump-linf": {"max_queries": 40, "steps": 2, "initial_gradient_eval_steps": 5,
                                  "max_gradient_eval_steps": 10},
             "boundary": {"max_queries": 30}}
EXACT = {"fgsm", "gradient", "pgd", "bim", "l1-iter", "l2-iter"}  # fixed-budget sweeps never stop early
ADAPTIVE_CASES = {"eot-pgd": ({"steps": 3, "restarts": 2}, 2), "opgd": ({"steps": 3}, 0), "cw-joint": ({"steps": 3, "rounds": 2}, 0),
                  "eot-pgd-l2": ({"steps": 5, "eot_samples": 1, "check_every": 2}, 3),
                  "rank-eot": ({"steps": 5, "eot_samples": 1, "check_every": 2, "restarts": 2}, 3),
                  "system-hsj": ({"max_queries": 40, "iterations": 2, "init_evals": 4, "max_evals": 8}, 0)}


def _attack(name: str, params: dict, operations: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    """(passes per image the attack made on 8 tiny images, its declared cost)."""
    torch.manual_seed(0)
    spec = discover().get("attack", name)
    model = _Counted(tiny_model().module).eval()
    images, _ = digits()
    x = torch.from_numpy(images[1:17:2]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        top1 = model.net(x).argmax(1)
    criterion = PaperCriterion(spec.targeted, top1, target_labels(top1, 3, 10) if spec.targeted else None, k=2,
                               threshold=0.9)
    defense = Defense("detector", "toy", operations=tuple([lambda b: b.flip(-1), lambda b: b * 0.9][:operations]),
                      detector_scores=lambda b: (b - 0.5).abs().mean((1, 2, 3)), threshold=0.2,
                      flags=lambda b: torch.zeros(len(b), dtype=torch.bool))
    validated = spec.params.model_validate(params)
    spec.run(model, x, criterion, validated, AttackContext(cache_dir=Path("."), defense=defense if spec.adaptive else None))
    made = (model.forward_rows / len(x), model.backward_rows / len(x))
    return made, spec.cost(validated, CostInputs((3, 16, 16), 10, operations))


@pytest.mark.parametrize("name", sorted(OBLIVIOUS))
def test_each_attack_declares_an_upper_bound_of_its_passes(name):
    made, declared = _attack(name, OBLIVIOUS[name])
    assert made[0] <= declared[0] and made[1] <= declared[1], (made, declared)
    if name in EXACT:
        assert made == declared


@pytest.mark.parametrize("name", sorted(ADAPTIVE_CASES))
def test_each_adaptive_attack_declares_an_upper_bound_of_its_classifier_passes(name):
    params, operations = ADAPTIVE_CASES[name]
    made, declared = _attack(name, params, operations)
    assert made[0] <= declared[0] and made[1] <= declared[1], (made, declared)


def test_a_model_without_its_weights_is_counted_on_its_architecture(tmp_path):
    registry = discover()
    params = registry.get("model", "cifar-resnet").params(checkpoint=str(tmp_path / "absent.th"))
    entry = Entry("model", "cifar-resnet", "resnet20", params)
    loaded, source = E.load_model(registry, entry, BuildContext(cache_dir=tmp_path))
    assert source.startswith(E.ARCHITECTURE_ONLY) and "checkpoint not found" in source
    assert loaded.input_size == (32, 32)
    forward, _, _ = E.count_flops(loaded.module, (3, 32, 32), batch=2)
    # ResNet-20's multiply-adds at 32x32: conv1, 6 convs of stage 1, 6 of stage 2 (the first
    # strided), 6 of stage 3, the linear layer; option-A shortcuts have none
    macs = (16 * 32 * 32 * 27 + 6 * 16 * 32 * 32 * 144 + 32 * 16 * 16 * 144 + 5 * 32 * 16 * 16 * 288
            + 64 * 8 * 8 * 288 + 5 * 64 * 8 * 8 * 576 + 64 * 10)
    assert forward == 2 * macs


# --- the command ---------------------------------------------------------------------------------

SMALL = """
[benchmark]
name = "estimate-small"
images_per_model = 20
top_k = 2
device = "cpu"

[database]
target_shift = 3

[detection]
groups = { JPEG = ["jpeg"] }

[[datasets]]
plugin = "sklearn-digits"
size = 16

[[models]]
plugin = "cifar-resnet"
name = "resnet20"
checkpoint = "absent.th"
size = 16

[[attacks]]
plugin = "fgsm"
epsilons = [0.05, 0.1]

[[attacks]]
plugin = "pgd"
epsilons = [0.05]
steps = 3

[[transforms]]
plugin = "jpeg"
grid = { quality = [80, 40] }

[[features]]
plugin = "counting"

[[detectors]]
plugin = "lda"
"""


@pytest.fixture
def small(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.toml").write_text(SMALL)
    return tmp_path / "small.toml"


def test_validate_estimate_prints_every_stage_and_its_assumptions(small, capsys):
    assert main(["validate", str(small), "--estimate", "--cpus", "2", "--success-rate", "0.5"]) == 0
    printed = capsys.readouterr().out
    head, _, table = printed.partition("estimate for 2 CPU core(s), no GPU")
    assert head.strip().endswith("0 subset cells") and table
    for stage in (*STAGES, "total"):
        assert re.search(rf"│ {stage} +│", table), stage
    assert "architecture only (weights absent)" in table and "model resnet20: counted and timed on its architecture" in table
    assert "Assumptions:" in table and "50% of attacked images succeed" in table
    assert re.search(r"│ resnet20 +│ pgd +│ +4 │ +3 │", table)  # 1 budget x (3 steps + a check)


def test_validate_without_estimate_prints_one_line(small, capsys):
    # without --estimate the files are checked: the absent checkpoint is an error, in one line
    assert main(["validate", str(small)]) == 2
    captured = capsys.readouterr()
    assert not captured.out and captured.err.count("\n") == 1 and "absent.th" in captured.err
    small.write_text(small.read_text().replace('checkpoint = "absent.th"\n', ""))
    assert main(["validate", str(small)]) == 0
    assert capsys.readouterr().out.strip().count("\n") == 0


@pytest.mark.parametrize("flags, message", [
    (["--estimate", "--gpus", "-1"], "--gpus -1: expected a whole number >= 0"),
    (["--estimate", "--cpus", "0"], "--cpus 0: expected a whole number >= 1"),
    (["--estimate", "--success-rate", "1.5"], "--success-rate 1.5: expected a share in [0, 1]"),
    (["--estimate", "--gpu-tflops", "0"], "--gpu-tflops 0.0: expected a number > 0"),
    (["--gpus", "2"], "--gpus sets up an estimate; add --estimate"),
    (["--estimate", "--rate-gpu-fwd", "fast"], "--rate-gpu-fwd 'fast': expected [MODEL=]IMAGES_PER_S"),
    (["--estimate", "--rate-gpu-bwd", "vgg16=100"], "--rate-gpu-bwd 'vgg16=100': unknown model 'vgg16'; valid: resnet20"),
])
def test_bad_estimate_flags_are_one_line_errors(small, capsys, flags, message):
    assert main(["validate", str(small), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err, err


def test_a_robust_cell_is_priced_as_every_member_on_every_image():
    from advbench.estimate.gathering import robust_cost

    registry = discover()
    robust = ('[[robust]]\nbudgets = [0.1, 0.2]\ntargets = [{ detector = "lda", feature = "counting", group = "JPEG" }]\n'
              '[[robust.members]]\nplugin = "eot-pgd"\nsteps = 4\n'
              '[[robust.members]]\nplugin = "rank-eot"\nsteps = 6\nbudgets = [0.2]\n')
    bench = parse_benchmark(tiny_benchmark(extra=robust).replace("testing-digits", "sklearn-digits")
                            .replace("testing-cnn", "digits-cnn"), registry)
    plan = plan_for(bench, registry)
    inputs = CostInputs((3, 16, 16), 10)
    ops = 3  # the JPEG group of the tiny benchmark
    eot, rank = (registry.get("attack", m.plugin) for m in bench.robust[0].members)
    first, second = sorted(plan.stage("robust"), key=lambda c: c.budget)
    verdict = 2 + ops  # the candidate before and after the save, then under each operation
    eot_cost = eot.cost(bench.robust[0].members[0].params[0], dataclasses.replace(inputs, operations=ops))
    rank_cost = rank.cost(bench.robust[0].members[1].params[1], dataclasses.replace(inputs, operations=ops))
    assert robust_cost(plan, registry, first, inputs) == (eot_cost[0] + verdict, eot_cost[1])
    assert robust_cost(plan, registry, second, inputs) == (eot_cost[0] + rank_cost[0] + 2 * verdict,
                                                           eot_cost[1] + rank_cost[1])
