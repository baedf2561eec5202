"""A control for the storage step: do trained detectors flag *normal* images that merely went
through the JPEG save -> reload every adversarial image goes through?

Normal images are the dataset's own files; adversarial ones are saved by advbench (JPEG q100 by
default). A detector could learn that difference instead of the attack. This script loads the
trained detector cells of a finished run from its cache, passes the normal eval images through
one save -> reload in the benchmark's format, and prints each detector's false-positive rate
before and after. Detectors that see labels under operations are applied through the tensor
backend of the operations (as adaptive attacks see them), so their FPR before may differ slightly
from the report's.

    python bench/storage_control.py benchmarks/cifar10-resnet20-beyond.toml --cache-dir CACHE \\
        --detector cnn-small-no-softmax --detector svm/differences/JPEG --detector lid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from advbench.cache import Cache, load_array
from advbench.config import load_benchmark
from advbench.engine.imagesets import SPLITS
from advbench.imaging import to_tensor
from advbench.registry import discover
from advbench.stages.adaptive import detector_defense, storage
from advbench.execution.context import CellContext, plan_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--cache-dir", type=Path, required=True, help="the run's artefact cache")
    parser.add_argument("--detector", action="append", required=True,
                        help="detector, or detector/feature/group; repeatable")
    args = parser.parse_args()
    registry = discover()
    bench = load_benchmark(args.config, registry)
    plan = plan_for(bench, registry)
    ctx = CellContext(bench, registry, Cache(args.cache_dir), plan)
    save_and_reload = storage(bench.database.image_format, bench.database.jpeg_quality)
    for split_cell in (c for c in plan.cells if c.stage == "split"):
        split = load_array(ctx.dir("split", split_cell), "split")
        normal = ctx.clean_arrays(split_cell)["images"][split == SPLITS.index("eval")]
        x = to_tensor(normal, ctx.device)
        stored = save_and_reload(x).detach()
        moved = (stored - x).abs() * 255
        print(f"{split_cell.dataset}/{split_cell.model}: {len(x)} normal eval images; the save -> reload "
              f"moves values by {moved.mean():.2f}/255 on average, {moved.amax():.0f}/255 at most")
        for name in args.detector:
            detector, feature, group = (name.split("/") + ["", ""])[:3]
            key = plan.detect_key(split_cell.dataset, split_cell.model, detector, feature, group)
            if key is None:
                valid = sorted("/".join(filter(None, (c.detector, c.feature, c.feature and c.feature_group)))
                               for c in plan.cells if c.stage == "detect" and not c.holdout)
                sys.exit(f"--detector {name!r}: no such detect cell in {args.config}; valid: {', '.join(valid)}")
            cell = plan.by_key[key]
            if not ctx.cache.state("detect", key).complete:
                sys.exit(f"--detector {name!r}: its trained cell is not in {args.cache_dir}; run "
                         f"`advbench run {args.config} --cache-dir {args.cache_dir}` first")
            flags = detector_defense(ctx, cell, cell, name).flags
            before, after = (float(flags(v).float().mean()) for v in (x, stored))
            print(f"  {name}: FPR {before:.3f} as loaded, {after:.3f} after one save -> reload (n = {len(x)})")


if __name__ == "__main__":
    main()
