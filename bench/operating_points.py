"""Detection rates at a chosen false-positive rate, the threshold set on NORMAL DEV images: the
operating point of a published figure (detectors_review reports each detector at its own FPR),
for every finished detect cell of a run, from its cached scores.

    python bench/operating_points.py benchmarks/cifar10-resnet20-baselines.toml --cache-dir CACHE \\
        --fpr 0.01 --fpr 0.05 [--max-images N]

Prints, per detect cell (mixture and per-attack) and attack, the eval TPR and the eval FPR at the
threshold that flags at most that share of the normal dev images (advbench.metrics.threshold_at_fpr),
with Wilson 95 % intervals and counts. ``detect`` cells store the 5 % point themselves
(tpr_at_dev_5fpr); this reads other points off the same scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from advbench import metrics as M
from advbench.cache import Cache, load_array, load_columns
from advbench.config import load_benchmark
from advbench.registry import discover
from advbench.execution.context import plan_for


def _rate(flags: np.ndarray) -> str:
    lo, hi = M.wilson_interval(float(flags.sum()), len(flags))
    return f"{flags.mean():.3f} [{lo:.3f}, {hi:.3f}] (n = {len(flags)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--cache-dir", type=Path, required=True, help="the run's artefact cache")
    parser.add_argument("--fpr", type=float, action="append", required=True, help="target FPR on normal dev images")
    parser.add_argument("--max-images", type=int, default=None, help="as the run's --max-images")
    args = parser.parse_args()
    registry = discover()
    plan = plan_for(load_benchmark(args.config, registry), registry, args.max_images)
    cache = Cache(args.cache_dir)
    for cell in plan.stage("detect"):
        if not cache.state("detect", cell.key).complete:
            continue
        folder = cache.path("detect", cell.key)
        scores, y, split = (load_array(folder, n) for n in ("scores", "y", "split"))
        origin = load_columns(folder, "per_image")["origin"]
        dev_normal, evaluation = (split == 1) & (y == 0), split == 2
        for fpr in args.fpr:
            t = M.threshold_at_fpr(scores[dev_normal], fpr)
            name = "/".join(p for p in (cell.detector, cell.feature, cell.feature_group if cell.feature else "") if p)
            print(f"{name} [{cell.holdout or 'mixture'}] at dev FPR {fpr:g} (threshold from {dev_normal.sum()} dev "
                  f"normals): eval FPR {_rate(scores[evaluation & (y == 0)] > t)}")
            for attack in sorted(set(origin[evaluation & (y == 1)].tolist())):
                print(f"    {attack}: TPR {_rate(scores[evaluation & (origin == attack)] > t)}")


if __name__ == "__main__":
    main()
