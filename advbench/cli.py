"""The ``advbench`` command. The only place that turns errors into exit codes:
0 success; 1 internal failure or failed cells (traceback in a log file); 2 user error."""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from advbench import API_VERSION, __version__
from advbench.config import load_benchmark
from advbench.errors import AdvbenchError
from advbench.estimate.progress import TimeLeft, expected_seconds
from advbench.preflight import plugin_checks, preflight
from advbench.redact import mask_passwords
from advbench.registry import discover
from advbench.report import coverage, formats, tables
from advbench.specs import KINDS
from advbench.stages import STAGES

# The runner (torch), the store (SQLAlchemy) and the estimate are imported by the commands that
# use them: `advbench --help` stays under a second (a test checks that torch is not imported).

# plain help (no rich markup): "[parquet]" stays literal, flags show no "<bool>" type, and wrapped
# docstrings read as paragraphs
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Build adversarial-image databases and benchmark detectors of adversarial images.")


def _print_version(value: bool) -> None:
    if value:
        out.print(f"advbench {__version__} (plugin API {API_VERSION})", highlight=False)
        raise typer.Exit()


@app.callback()
def _advbench(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                    help="Print the version of advbench and of its plugin API, and exit.")] = False) -> None:
    """Build adversarial-image databases and benchmark detectors of adversarial images."""
# markup off: benchmark, entry and plugin names are printed as written ("bench[/]" crashed rich)
err = Console(stderr=True, markup=False)
# piped output keeps full-width tables instead of wrapping at 80 columns
out = Console(width=None if Console().is_terminal else 200, markup=False)


Format = Enum("Format", {name: name for name in formats.FORMATS}, type=str)  # one list: formats.FORMATS


StoreOpt = Annotated[Optional[str], typer.Option("--store", help="SQLAlchemy URL or SQLite file (default: the config's, else results.db).")]


class ExecutorKind(str, Enum):
    local = "local"
    ray = "ray"


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Benchmark file (TOML).")],
    store: StoreOpt = None,
    max_images: Annotated[Optional[int], typer.Option("--max-images", min=1, help="Cap clean images per model.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Forked processes for the CPU cells (predictions, feature detectors, scores).")] = 1,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore cached artefacts; recompute every cell.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Artefact cache (default: $ADVBENCH_CACHE_DIR or the user cache).")] = None,
    executor: Annotated[ExecutorKind, typer.Option("--executor", help="local: this process (and --workers forks); ray: a Ray cluster (pip install -e \".[ray]\").")] = ExecutorKind.local,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address (auto, HOST:PORT); default: a local Ray instance.")] = None,
    threads: Annotated[Optional[str], typer.Option("--threads", metavar="N|auto", help="torch (and BLAS) threads per process: N, or auto (idle cores: cores less the load average). Default: $ADVBENCH_THREADS, else $OMP_NUM_THREADS, else 1 (fast on a shared machine; the same numbers on every machine).")] = None,
) -> int:
    """Plan the benchmark matrix and execute it; results go to the store."""
    from advbench.execution.runner import RunOptions, Runner
    from advbench.threads import apply_interop

    if address is not None and executor != ExecutorKind.ray:
        raise AdvbenchError("--address is the address of a Ray cluster; add --executor ray")
    bench = load_benchmark(config, discover())
    runner = Runner(bench, discover(), RunOptions(store=store, max_images=max_images, workers=workers, fresh=fresh,
                                                  cache_dir=cache_dir, executor=executor.value, address=address,
                                                  threads=threads))
    preflight(bench, discover(), runner.plan)  # files, k and labels: before the store is opened
    apply_interop(runner.thread_choice.threads)
    started = time.monotonic()
    counts = {s: len(runner.plan.stage(s)) for s in STAGES}
    counts = {s: n for s, n in counts.items() if n}
    if err.is_terminal:
        with Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[note]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=err) as progress:
            tasks = {s: progress.add_task(s, total=n, note="") for s, n in counts.items()}

            def on_cell(outcome):
                progress.update(tasks[outcome.cell.stage], advance=1,
                                note="cached" if outcome.cached else outcome.cell.title[:40])
                if outcome.note:
                    progress.console.print(f"{outcome.cell.title}: {outcome.note}", highlight=False, markup=False)

            result = runner.run_with(on_cell)
    else:  # nohup, SLURM, CI: one plain line per finished cell and a progress line now and then
        left = TimeLeft(counts, lambda: expected_seconds(runner.plan, runner.registry, runner.cache.root),
                        parallel={s: workers for s, stage in STAGES.items() if stage.forkable} if workers > 1 and executor == ExecutorKind.local else {})
        result = runner.run_with(PlainProgress(counts, err, left=left))
    n_cached = sum(o.cached for o in result.outcomes)
    # names are printed, not parsed as markup ("bench[/]"); a store URL's password is masked
    err.print(f"{bench.settings.name}: {len(result.outcomes)} cells ({len(result.computed)} computed, {n_cached} cached, "
              f"{len(result.failed)} failed) in {time.monotonic() - started:.1f} s, {runner.thread_choice.describe()} "
              f"-> {mask_passwords(result.store_url)} (run {result.run_id})", highlight=False, markup=False, soft_wrap=True)
    warning = coverage.few_adversarial_warning(coverage.from_outcomes(result.outcomes))
    if warning:
        err.print(warning, highlight=False, markup=False, soft_wrap=True)
    if result.failed:
        for o in result.failed[:10]:
            err.print(mask_passwords(f"failed: {o.cell.title}: {o.error}"), highlight=False, markup=False, soft_wrap=True)
        if all(o.user_error for o in result.failed):
            return 2
        err.print(f"tracebacks in {result.log_path}", highlight=False, markup=False, soft_wrap=True)
        return 1
    err.print("next: advbench report" + (f" --store {mask_passwords(store)}" if store else ""), highlight=False,
              markup=False, soft_wrap=True)
    return 0


class PlainProgress:
    """Progress for logs: a line per finished cell, and every ``every`` seconds the count and the
    time left, from the plan's cost estimate calibrated by the cells computed so far
    (:mod:`advbench.estimate.progress`)."""

    def __init__(self, counts: dict[str, int], console: Console, every: float = 30.0, left: TimeLeft | None = None,
                 clock=time.monotonic):
        self.console, self.every, self.clock = console, every, clock
        self.total, self.done = sum(counts.values()), 0
        self.time_left = left or TimeLeft(counts, clock=clock)
        self.start = self.last = clock()

    def __call__(self, outcome) -> None:
        self.done += 1
        computed = outcome.status == "ok" and not outcome.cached
        self.time_left.observe(outcome.cell.key, outcome.cell.stage, outcome.seconds, computed)
        how = "cached" if outcome.cached else outcome.status if outcome.status != "ok" else "computed"
        line = f"[{self.done}/{self.total}] {how} {outcome.cell.title} {outcome.seconds:.1f}s"
        if outcome.note or outcome.error:
            line += f" ({outcome.note or outcome.error})"
        self.console.print(line, highlight=False, markup=False, soft_wrap=True)
        now = self.clock()
        if now - self.last >= self.every and self.done < self.total:
            left = self.left()
            self.last = self.clock()  # pricing the plan the first time takes a few seconds
            self.console.print(f"progress: {self.done}/{self.total} cells, {(now - self.start) / 60:.1f} min elapsed, "
                               f"~{left / 60:.1f} min left", highlight=False, soft_wrap=True)

    def left(self) -> float:
        """Seconds left, estimated."""
        return self.time_left.seconds()


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Benchmark file (TOML).")],
    estimate: Annotated[bool, typer.Option("--estimate", help="Also estimate, per stage, the forward/backward passes, FLOPs and wall time (builds each model, or its architecture when the weights are absent, and times a few passes here).")] = False,
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="With --estimate: GPUs to plan for (default: those torch sees here).")] = None,
    cpus: Annotated[Optional[int], typer.Option("--cpus", help="With --estimate: CPU cores to plan for (default: this machine's).")] = None,
    max_images: Annotated[Optional[int], typer.Option("--max-images", help="Cap clean images per model, as run --max-images.")] = None,
    success_rate: Annotated[Optional[float], typer.Option("--success-rate", help="With --estimate: share of attacked images that succeed (default 1, an upper bound; the paper's and the CIFAR-10 run's attacks: about 0.5).")] = None,
    gpu_tflops: Annotated[Optional[float], typer.Option("--gpu-tflops", help="With --estimate: achieved TFLOP/s of a GPU not measured here (default 20: an A100 in TF32).")] = None,
    rate_gpu_fwd: Annotated[Optional[list[str]], typer.Option("--rate-gpu-fwd", metavar="[MODEL=]IMG/S", help="With --estimate: [MODEL=]IMAGES_PER_S, forward passes per second measured on the planned GPU (repeatable; without MODEL: every model).")] = None,
    rate_gpu_bwd: Annotated[Optional[list[str]], typer.Option("--rate-gpu-bwd", metavar="[MODEL=]IMG/S", help="With --estimate: [MODEL=]IMAGES_PER_S, forward+backward passes per second on the planned GPU.")] = None,
) -> int:
    """Check a benchmark file and print its matrix size; no work is done. --estimate adds what it
    will cost: passes, FLOPs and wall time per stage on the given GPUs/CPUs (docs/planning.md)."""
    wanted = {"--gpus": gpus, "--cpus": cpus, "--success-rate": success_rate, "--gpu-tflops": gpu_tflops,
              "--rate-gpu-fwd": rate_gpu_fwd, "--rate-gpu-bwd": rate_gpu_bwd}
    given = [flag for flag, value in wanted.items() if value is not None]
    if given and not estimate:
        raise AdvbenchError(f"{given[0]} sets up an estimate; add --estimate")
    _check_estimate_flags(gpus, cpus, max_images, success_rate, gpu_tflops)
    if estimate:
        _check_planned_machine(gpus, cpus)
    bench = load_benchmark(config, discover())
    rates = _gpu_rates(bench, rate_gpu_fwd or [], rate_gpu_bwd or []) if estimate else {}
    from advbench.execution.context import plan_for

    runner_plan = plan_for(bench, discover(), max_images)
    preflight(bench, discover(), runner_plan, files=not estimate)
    if estimate:  # planning for another machine: what this one lacks is said, and the estimate goes on
        for problem in plugin_checks(bench, discover()):
            err.print(f"warning: {config}: {problem} (on this machine)", highlight=False, markup=False, soft_wrap=True)
    sizes = ", ".join(f"{len(runner_plan.stage(s))} {s}" for s in STAGES)
    out.print(f"{config}: ok — {sizes} cells", highlight=False, markup=False)
    if estimate:
        _estimate(runner_plan, gpus, cpus, success_rate, gpu_tflops, rates)
    return 0


def _check_estimate_flags(gpus, cpus, max_images, success_rate, gpu_tflops) -> None:
    checks = [("--gpus", gpus, gpus is None or gpus >= 0, "a whole number >= 0"),
              ("--cpus", cpus, cpus is None or cpus >= 1, "a whole number >= 1"),
              ("--max-images", max_images, max_images is None or max_images >= 1, "a whole number >= 1"),
              ("--success-rate", success_rate, success_rate is None or 0 <= success_rate <= 1, "a share in [0, 1]"),
              ("--gpu-tflops", gpu_tflops, gpu_tflops is None or gpu_tflops > 0, "a number > 0")]
    for flag, value, ok, valid in checks:
        if not ok:
            raise AdvbenchError(f"{flag} {value}: expected {valid}")


def _local_cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _check_planned_machine(gpus: int | None, cpus: int | None) -> None:
    """GPUs of another machine (a cluster's 8) and this machine's cores would be a plan of no
    machine: the CPU cells and image operations would be timed on 2 cores beside 8 GPUs."""
    if gpus is None or cpus is not None:
        return
    import torch

    here = torch.cuda.device_count()
    if gpus != here:
        raise AdvbenchError(f"--gpus {gpus} plans another machine than this one ({here} GPUs, {_local_cpus()} CPU "
                            f"cores here): give its CPU cores too, e.g. --gpus {gpus} --cpus {max(8, 8 * gpus)}; the "
                            f"CPU cells and image operations run on them")


def _gpu_rates(bench, forward: list[str], both: list[str]) -> dict[str, tuple[float | None, float | None]]:
    """--rate-gpu-fwd/--rate-gpu-bwd [MODEL=]IMAGES_PER_S -> {model label or "*": (fwd, fwd+bwd)}."""
    labels = [m.label for m in bench.models]
    rates: dict[str, list[float | None]] = {}
    for position, (flag, values) in enumerate((("--rate-gpu-fwd", forward), ("--rate-gpu-bwd", both))):
        for text in values:
            label, _, number = text.rpartition("=")
            label = label or "*"
            try:
                rate = float(number)
            except ValueError:
                rate = -1.0
            if not rate > 0:
                raise AdvbenchError(f"{flag} {text!r}: expected [MODEL=]IMAGES_PER_S with a number > 0, e.g. 2500 "
                                    f"or {labels[0]}=2500")
            if label != "*" and label not in labels:
                raise AdvbenchError(f"{flag} {text!r}: unknown model {label!r}; valid: {', '.join(labels)}")
            rates.setdefault(label, [None, None])[position] = rate
    return {label: (pair[0], pair[1]) for label, pair in rates.items()}


def _estimate(plan, gpus, cpus, success_rate, gpu_tflops, gpu_rates) -> None:
    import torch

    from advbench import estimate as E

    if cpus is None:
        cpus = _local_cpus()
    options = E.Options(gpus=torch.cuda.device_count() if gpus is None else gpus, cpus=cpus,
                        success_rate=1.0 if success_rate is None else success_rate,
                        gpu_tflops=E.DEFAULT_GPU_TFLOPS if gpu_tflops is None else gpu_tflops, gpu_rates=gpu_rates)
    result = E.estimate(plan, discover(), options, log=lambda line: err.print(f"estimate: {line}", highlight=False,
                                                                                  markup=False))
    _print_estimate(result)


def _print_estimate(est) -> None:
    from rich.table import Table as RichTable

    from advbench import estimate as E

    stages = RichTable(title=E.hardware_line(est.hardware), header_style="bold", title_justify="left")
    device = "GPU" if est.hardware.gpus else "CPU"
    for col in ("Stage", "Cells", "Forward passes", "Backward passes", "FLOPs", f"Passes ({device})",
                "Operations (CPU)", "Wall time"):
        stages.add_column(col, justify="left" if col == "Stage" else "right")
    for s in est.stages:
        def shown(value: float, text: str, s=s) -> str:
            return "-" if not s.cells else ("≥ " if s.at_least and value > 0 else "") + text
        stages.add_row(s.stage, str(s.cells), shown(s.forward, E.human_count(s.forward)),
                       shown(s.backward, E.human_count(s.backward)), shown(s.flops, E.human_count(s.flops)),
                       shown(s.pass_seconds, E.human_time(s.pass_seconds)), shown(s.cpu_seconds, E.human_time(s.cpu_seconds)),
                       shown(s.seconds, E.human_time(s.seconds)))
    bound = "≥ " if any(s.at_least for s in est.stages) else ""
    stages.add_row("total", str(sum(s.cells for s in est.stages)), "", "", bound + E.human_count(est.flops), "", "",
                   bound + E.human_time(est.seconds), style="bold")
    out.print(stages)
    nets = RichTable(title="Networks (FLOPs per image, on one batch)", header_style="bold", title_justify="left")
    for col in ("Network", "Input", "Forward", "Backward", "Rates (images/s: forward, forward+backward)", "Built"):
        nets.add_column(col)
    for n in est.networks:
        rates = [f"{r.how}: {E.human_rate(1 / r.forward_s)}, {E.human_rate(1 / (r.forward_s + r.backward_s))}"
                 for r in (n.cpu, n.gpu) if r is not None and r.forward_s > 0]
        if est.hardware.gpus and n.gpu is None:
            r = E.gpu_rates(n, est.hardware, n.batch)
            rates.append(f"planned GPU, {r.how}: {E.human_rate(1 / r.forward_s)}, "
                         f"{E.human_rate(1 / (r.forward_s + r.backward_s))}")
        kind = " (training: weight gradients)" if n.training else " (input gradients)"
        built = "architecture only (weights absent)" if n.source.startswith(E.ARCHITECTURE_ONLY) else n.source
        nets.add_row(n.name, f"{n.batch}x{n.shape[0]}x{n.shape[1]}x{n.shape[2]}", E.human_count(n.forward_flops),
                     E.human_count(n.backward_flops) + kind, "; ".join(rates) or "not measured", built)
    out.print(nets)
    if est.attacks:
        attacks = RichTable(title="Attacks (classifier passes per attacked image: upper bounds from AttackSpec.cost)",
                            header_style="bold", title_justify="left")
        for col in ("Model", "Attack", "Forward / image", "Backward / image", "Images", "FLOPs",
                    "Time (one GPU)" if est.hardware.gpus else "Time"):
            attacks.add_column(col, justify="left" if col in ("Model", "Attack") else "right")
        for a in est.attacks:
            fwd, bwd = (f"{a.per_image[0]:,.0f}", f"{a.per_image[1]:,.0f}") if a.per_image else ("unknown", "unknown")
            attacks.add_row(a.model, a.attack, fwd, bwd, f"{a.images:,.0f}", E.human_count(a.flops), E.human_time(a.seconds))
        out.print(attacks)
    out.print("Assumptions:", style="bold")
    for line in est.assumptions:
        out.print(f"- {line}", highlight=False, markup=False, soft_wrap=True)
    if est.unknown:
        out.print("Not counted (unknown):", style="bold")
        for line in est.unknown:
            out.print(f"- {line}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def report(
    store: StoreOpt = None,
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", help="Benchmark name (default: the latest run's).")] = None,
    run_id: Annotated[Optional[int], typer.Option("--run", help="Run id (default: the latest run).")] = None,
    table: Annotated[Optional[str], typer.Option("--table", help="Paper table 1-6, or: " + ", ".join(tables.EXTRA_TABLES) + "; instead of the leaderboard.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.rich,
    sort: Annotated[str, typer.Option("--sort", help="Leaderboard metric: accuracy, balanced_accuracy, eer, auroc, tpr_at_5fpr, tnr_at_95tpr, tpr_at_dev_5fpr.")] = "accuracy",
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="Leaderboard: show the best N cells per dataset/model (--leaderboard: default 3).")] = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="List the stored runs.")] = False,
    leaderboard: Annotated[bool, typer.Option("--leaderboard", help="Best detector cells across every benchmark's latest run.")] = False,
    compare_runs: Annotated[Optional[tuple[int, int]], typer.Option("--compare", help="RUN_A RUN_B: metric deltas between two runs.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Artefact cache, for the plots of --format html.")] = None,
) -> int:
    """Print the leaderboard (or a paper table, a comparison, the run list) of the store."""
    if sort not in tables.LEADERBOARD_METRICS:
        raise AdvbenchError(f"--sort {sort!r}: unknown metric; valid: {', '.join(tables.LEADERBOARD_METRICS)}")
    st = open_store(store, create=False)
    images: list[tuple[str, bytes]] = []
    warning = ""  # a run's image sets with few adversarial eval images
    run_row = None
    if runs:
        result = [tables.Table("Runs", ("Run", "Benchmark", "Config hash", "Started", "Status"),
                               tuple((r.id, r.benchmark, r.config_hash, f"{r.started_at:%Y-%m-%d %H:%M}", r.status)
                                     for r in st.runs(benchmark)))]
    elif leaderboard:
        latest = {r.benchmark: r for r in st.runs(benchmark)}.values()
        result = tables.cross_run_leaderboard([(r, _cells(st, r)) for r in latest], sort, best=top or 3)
    elif compare_runs:
        a, b = (st.get_run(i) for i in compare_runs)
        result = tables.compare(_cells(st, a), _cells(st, b), a.id, b.id)
    else:
        run_row = _pick_run(st, run_id, benchmark)
        cells = _cells(st, run_row)
        warning = coverage.few_adversarial_warning(coverage.from_store(cells))
        if table:
            result = tables.table_named(table)(cells)
        elif fmt == Format.html:  # the whole run on one page: the evaluation tables where the run has their cells
            result = tables.leaderboard(cells, sort, top) + [t for n in sorted(tables.TABLES) for t in tables.TABLES[n](cells)]
            result += [t for name in HTML_EXTRA_TABLES for t in tables.EXTRA_TABLES[name](cells)]
            images = _run_figures(cells, cache_dir, st, run_row.id)
        else:
            result = tables.leaderboard(cells, sort, top)
        failed = tables.failures(cells)
        if failed and not table:
            result.append(failed)
    if not result:
        if table in tables.TABLE_NEEDS:
            raise AdvbenchError(f"--table {table}: this run has nothing for it; it needs {tables.TABLE_NEEDS[table]}")
        raise AdvbenchError("nothing to report for this selection (no matching cells)")
    if warning:
        err.print(warning, highlight=False, markup=False, soft_wrap=True)
    if fmt == Format.rich and out_file is None:
        formats.render_rich(result, out)
        return 0
    if fmt == Format.html:
        text = formats.render_html(result, images, *_html_header(run_row, st))
    else:
        text = formats.render_text(result, "markdown" if fmt == Format.rich else fmt.value)
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(text)
        err.print(f"wrote {out_file}", highlight=False, markup=False)
    else:
        sys.stdout.write(text)
    return 0


#: Tables of the evaluation protocol on the whole-run HTML page (each empty without its cells).
HTML_EXTRA_TABLES = ("detection", "matched", "adaptive", "robust", "security", "unseen", "subset")


def _html_header(run_row, st) -> tuple[str, list[tuple[str, str]]]:
    """The page's title and what it reports on: the benchmark, run, dates and versions (a page
    saved on its own must say which run it shows and what made it)."""
    made = f"advbench {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    if run_row is None:  # the run list, a comparison, the cross-run leaderboard
        return "advbench report", [("Store", mask_passwords(st.url)), ("Generated", made)]
    versions = ", ".join(f"{name} {v}" for name, v in (("advbench", run_row.advbench_version),
                                                       ("torch", run_row.torch_version),
                                                       ("foolbox", run_row.foolbox_version)) if v)
    finished = f"{run_row.finished_at:%Y-%m-%d %H:%M} UTC" if run_row.finished_at else "not finished"
    return (f"advbench report — {run_row.benchmark}, run {run_row.id}",
            [("Benchmark", run_row.benchmark), ("Run", f"{run_row.id} ({run_row.status}), config {run_row.config_hash}, "
                                                      f"seed {run_row.seed}"),
             ("Started", f"{run_row.started_at:%Y-%m-%d %H:%M} UTC"), ("Finished", finished),
             ("Versions", versions or "not recorded"), ("Store", mask_passwords(st.url)), ("Generated", made)])


def open_store(store: str | None, *, create: bool = True):
    from advbench.store import open_store as opened

    return opened(store, create=create)


def _pick_run(st, run_id: int | None, benchmark: str | None):
    return st.get_run(run_id) if run_id is not None else st.latest_run(benchmark)


def _cells(st, run_row) -> list:
    """A run's cells in the order of its benchmark file, not the order they finished in (which
    a kill or --workers changes): reports must not depend on it."""
    from advbench.report.order import in_plan_order

    return in_plan_order(st.cells(run_row.id), run_row.config_text)


def _run_figures(cells, cache_dir: Path | None, st=None, run_id: int | None = None) -> list[tuple[str, bytes]]:
    from advbench.cache import Cache, default_cache_dir
    from advbench.report import figures

    cache = Cache(cache_dir or default_cache_dir())
    images = _detect_images(st, run_id)  # read once for both plots that use them (ROC, logits)
    made = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in figures.KINDS:
            if kind == "security" and not any(c.stage == "score" for c in cells):
                continue  # a run without evaluation sets: no curve to expect, nothing to say
            path = Path(tmp) / f"{kind}.png"
            try:
                _draw(kind, cells, cache, path, images)
            except AdvbenchError as e:  # nothing to draw for that kind, or no artefacts: say which
                err.print(f"report: no {kind} plot: {e}", highlight=False, markup=False)
                continue
            made.append((f"{kind} — {figures.CAPTIONS[kind]}", path.read_bytes()))
    return made


def _detect_images(st, run_id: int | None):
    """The run's per-image rows of its detect cells (what ROC curves and logits plot), or None."""
    return st.images(run_id, stage="detect") if st is not None and run_id is not None else None


def _draw(kind: str, cells, cache, path: Path, images=None) -> Path:
    """One plot of a run; ROC curves and logits read the store's per-image rows (``images``), the
    cache as a fallback."""
    from advbench.report import figures

    if kind in ("roc", "logits"):
        return getattr(figures, kind)(cells, cache, path, images=images,
                                      on_note=lambda note: err.print(note, highlight=False, markup=False))
    return getattr(figures, kind)(cells, path)


class PlotKind(str, Enum):
    roc = "roc"
    heatmap = "heatmap"
    cost = "cost"
    logits = "logits"
    security = "security"


@app.command()
def plot(
    kind: Annotated[PlotKind, typer.Argument(help="roc | heatmap (Table 3) | cost (accuracy vs operations, subset searches) | logits (Fig. 2) | security (rates vs budget).")],
    out_file: Annotated[Path, typer.Option("--out", help="PNG, SVG or PDF file to write.")] = Path("plot.png"),
    store: StoreOpt = None,
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", help="Benchmark name (default: the latest run's).")] = None,
    run_id: Annotated[Optional[int], typer.Option("--run", help="Run id (default: the latest run).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Artefact cache holding the run's logits (and scores the store lacks).")] = None,
) -> int:
    """Draw a plot of a stored run."""
    from advbench.cache import Cache, default_cache_dir

    st = open_store(store, create=False)
    run_row = _pick_run(st, run_id, benchmark)
    images = _detect_images(st, run_row.id) if kind.value in ("roc", "logits") else None
    path = _draw(kind.value, _cells(st, run_row), Cache(cache_dir or default_cache_dir()), out_file, images)
    err.print(f"wrote {path}", highlight=False, markup=False)
    return 0


class ExportFormat(str, Enum):
    csv = "csv"
    parquet = "parquet"


@app.command()
def export(
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="Run id (see 'advbench report --runs').")],
    out_file: Annotated[Path, typer.Option("--out", help="File to write (.csv, .parquet).")],
    fmt: Annotated[Optional[ExportFormat], typer.Option("--format", help="csv or parquet (pip install 'advbench[parquet]'); default: from the --out suffix.")] = None,
    store: StoreOpt = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="Only the cells of this stage: detect, score or correct.")] = None,
) -> int:
    """Export a run's per-image results: one row per image per cell, with the cell's columns."""
    from advbench.report import export as exporting

    chosen = exporting.format_for(out_file, fmt.value if fmt else None)
    if stage is not None and stage not in STAGES:
        raise AdvbenchError(f"--stage {stage!r}: unknown stage; valid: {', '.join(STAGES)}")
    st = open_store(store, create=False)
    run_row = st.get_run(run_id)
    columns = st.images(run_row.id, stage=stage)
    if not columns.get("cell_key"):
        what = f"{stage} cells of run {run_row.id}" if stage else f"run {run_row.id}"
        raise AdvbenchError(f"no per-image rows stored for {what}; detect, score and correct cells store them "
                            "when they finish (a run made before advbench stored them: run it again)")
    n = exporting.write_images(columns, out_file, chosen)
    err.print(f"wrote {out_file} ({n} rows, {len(set(columns['cell_key']))} cells)", highlight=False, markup=False)
    return 0


@app.command()
def plugins(
    kind: Annotated[Optional[str], typer.Option("--kind", help=f"One of: {', '.join(KINDS)}.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> int:
    """List every discovered plugin with its kind, package and parameters."""
    if kind is not None and kind not in KINDS:
        raise AdvbenchError(f"--kind {kind!r}: unknown plugin kind; valid: {', '.join(KINDS)}")
    registry = discover()
    entries = registry.entries(kind)
    if as_json:
        data = [{"kind": e.spec.kind, "name": e.spec.name, "package": e.package, "module": e.module,
                 "summary": e.spec.summary, "default": e.spec.default, "declares": _declared(e.spec),
                 "parameters": e.spec.params.model_json_schema().get("properties", {})} for e in entries]
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return 0
    from rich.table import Table as RichTable

    t = RichTable(title="advbench plugins", header_style="bold")
    for col in ("Kind", "Name", "Package", "Summary", "Declares", "Parameters"):
        t.add_column(col)
    for e in entries:
        params = ", ".join(f"{n}={f.default!r}" if not f.is_required() else f"{n} (required)"
                           for n, f in e.spec.params.model_fields.items())
        t.add_row(e.spec.kind, e.spec.name + (" *" if e.spec.default else ""), e.package, e.spec.summary,
                  _declared_text(_declared(e.spec)), params)
    out.print(t)
    out.print("* in the default set used when a benchmark omits that section", style="dim")
    return 0


#: what a spec of each kind declares beyond its parameters, as `advbench plugins` shows it
DECLARED = {"attack": ("budget_param", "norm", "threat", "targeted", "adaptive"),
            "transform": ("default_group", "default_grid", "differentiable"),
            "detector": ("inputs",)}


def _declared(spec) -> dict:
    """An attack's budget parameter, norm, threat model, targeting and adaptive targets; a
    transform's default group and grid (the default set's operations) and differentiability; a
    detector's inputs. Read by name, so a spec without one of these fields simply omits it."""
    names = DECLARED.get(spec.kind, ())
    return {n: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
            for n in names if (v := getattr(spec, n, None)) is not None}


def _declared_text(declared: dict) -> str:
    parts = []
    if "budget_param" in declared:
        parts.append(f"budget: {declared['budget_param'] or 'none'}" + (f" ({declared['norm']})" if declared.get("norm") else ""))
    for name in ("threat", "inputs"):
        if declared.get(name):
            parts.append(f"{name}: {declared[name]}")
    if declared.get("targeted"):
        parts.append("targeted")
    if declared.get("adaptive"):
        parts.append(f"adaptive: {', '.join(declared['adaptive'])}")
    if "default_group" in declared:
        parts.append(f"group: {declared['default_group'] or '(its name)'}")
    for param, values in (declared.get("default_grid") or {}).items():
        parts.append(f"grid: {param} = {', '.join(map(str, values))}")
    if declared.get("differentiable"):
        parts.append("differentiable")
    return "; ".join(parts)


cache_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Check and tidy the artefact cache.")
app.add_typer(cache_app, name="cache")
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Artefact cache (default: $ADVBENCH_CACHE_DIR or the user cache).")]


def _cache(cache_dir: Path | None):
    from advbench.cache import Cache, default_cache_dir

    root = cache_dir or default_cache_dir()
    if not root.is_dir():
        raise AdvbenchError(f"no cache at {root}; pass --cache-dir or set ADVBENCH_CACHE_DIR")
    return Cache(root)


@cache_app.command("verify")
def cache_verify(
    cache_dir: CacheDirOpt = None,
    fix: Annotated[bool, typer.Option("--fix", help="Delete damaged artefacts and plugin files (the next run rebuilds them).")] = False,
) -> int:
    """Check every artefact against the checksums of its completion record (metrics included),
    and every file plugins keep in the cache (trained weights, memos) against its own."""
    from advbench import verified

    cache = _cache(cache_dir)
    damaged, total = [], 0
    for stage, key in cache.artefacts():
        total += 1
        state = cache.state(stage, key)
        if not state.complete:
            damaged.append((stage, key, state.reason or state.status))
    for stage, key, why in damaged:
        out.print(f"damaged: {stage}/{key}: {why}" + (" (deleted)" if fix else ""), highlight=False, markup=False)
        if fix:
            cache.discard(stage, key)
    files, bad_files, unsealed = 0, 0, 0
    for path, state in cache.plugin_files():
        files += 1
        where = path.relative_to(cache.root)
        if state.status == "unsealed":  # written by a plugin without advbench.verified: nothing to check against
            unsealed += 1
            out.print(f"unverified: {where}: {state.reason}", highlight=False, markup=False)
        elif not state.ok:
            bad_files += 1
            out.print(f"damaged: {where}: {state.reason}" + (" (deleted)" if fix else ""), highlight=False, markup=False)
            if fix:
                verified.discard(path)
    out.print(f"{cache.root}: {total} artefacts, {len(damaged)} damaged; {files} plugin files, {bad_files} damaged"
              + (f", {unsealed} without a checksum" if unsealed else ""), highlight=False, markup=False)
    return 1 if (damaged or bad_files) and not fix else 0


@cache_app.command("prune")
def cache_prune(cache_dir: CacheDirOpt = None) -> int:
    """Remove scratch folders and lock files that no running process holds, and temporary
    files whose writer is gone."""
    cache = _cache(cache_dir)
    removed = cache.prune()
    out.print(f"{cache.root}: removed {removed['scratch']} stale scratch folders, {removed['locks']} lock files "
              f"and {removed['tmp']} temporary files", highlight=False, markup=False)
    return 0


def _internal_error_log() -> Path:
    from advbench.cache import default_cache_dir

    for directory in (default_cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"crash-{datetime.now():%Y%m%d-%H%M%S}.log"
            path.write_text(mask_passwords(traceback.format_exc()))
            return path
        except OSError:
            continue
    return Path("(unwritable)")


# Typer 0.29 and later raise the exceptions of their own copy of click (typer._click)
_USAGE_ERRORS = tuple({click.ClickException, getattr(getattr(typer, "_click", None), "ClickException", click.ClickException)})
_ABORTS = tuple({click.exceptions.Abort, getattr(typer, "Abort", click.exceptions.Abort)})


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (a plugin's, a library's) as one line on stderr, like an error."""
    err.print(f"warning: {' '.join(str(message).split())}", highlight=False, markup=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warnings
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown


def _main(argv: list[str] | None) -> int:
    try:
        rc = app(args=argv, prog_name="advbench", standalone_mode=False)
    except _ABORTS:
        err.print("aborted")
        return 130
    except _USAGE_ERRORS as exc:  # usage errors: one line and where the valid forms are, exit 2
        message = " ".join(exc.format_message().replace("Value error, ", "").split())
        if message:  # (none: a bare command, whose help was shown)
            where = getattr(getattr(exc, "ctx", None), "command_path", None) or "advbench"
            err.print(f"error: {message} (see '{where} --help')", highlight=False, markup=False, soft_wrap=True)
        return exc.exit_code
    except AdvbenchError as exc:
        for line in str(exc).splitlines():
            err.print(mask_passwords(f"error: {line}"), highlight=False, markup=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted; finished cells are stored and cached")
        return 130
    except Exception as exc:
        path = _internal_error_log()
        err.print(mask_passwords(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())} (traceback in {path})"),
                  highlight=False, markup=False, soft_wrap=True)
        return 1
    return rc if isinstance(rc, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
