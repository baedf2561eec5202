"""Per-image results of a run as one flat file: a row per image per cell, for pandas, R or SQL.

The rows come from the store's per-image table (``Store.images(run_id)``: column name -> list):
each cell's columns (cell_key and the fields of :class:`advbench.schema.Cell`: stage, dataset,
model, imageset, entry, family, budget, norm, threat, target, evaluation, operation,
operation_group, feature_group, feature, detector, correction_group, corrector, holdout) beside
each image's (:class:`advbench.schema.ImageRow`: idx, source, origin, split, y, truth, score,
decision, label, logit_0, logit_1; empty where a cell has none). Column types come from the
schema too. CSV needs nothing beyond Python (a label that a spreadsheet would run as a formula
gets a leading ``'``); Parquet needs pyarrow
(``pip install 'advbench[parquet]'``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from advbench import schema
from advbench.errors import AdvbenchError
from advbench.report.safe_text import csv_cell

FORMATS = ("csv", "parquet")
PARQUET_EXTRA = "pip install 'advbench[parquet]'"


def format_for(path: Path, fmt: str | None) -> str:
    """The export format: ``fmt`` if given, else from the file name (.parquet / .pq, else CSV)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise AdvbenchError(f"--format {fmt!r}: unknown export format; valid: {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    if suffix not in ("", ".csv", ".parquet", ".pq"):
        raise AdvbenchError(f"--out {path}: cannot tell the format from {suffix!r}; name it .csv, .parquet or .pq, "
                            f"or pass --format ({', '.join(FORMATS)})")
    return "parquet" if suffix in (".parquet", ".pq") else "csv"


def write_images(columns: Mapping[str, Sequence], path: Path, fmt: str) -> int:
    """Write the per-image ``columns`` to ``path`` as CSV or Parquet; returns the row count.
    The file is written beside its target and moved into place, so a reader never sees half."""
    n = len(next(iter(columns.values()), []))
    if path.is_dir():
        raise AdvbenchError(f"--out {path}: is a directory; give a file name, e.g. {path / 'images.csv'}")
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            _parquet(columns, partial)
        else:
            _csv(columns, partial)
        partial.replace(path)
    except OSError as exc:
        raise AdvbenchError(f"--out {path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        partial.unlink(missing_ok=True)
    return n


def _csv(columns: Mapping[str, Sequence], path: Path) -> None:
    names = list(columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([csv_cell(n) for n in names])
        for row in zip(*(columns[name] for name in names)):  # None (SQL NULL): an empty field
            writer.writerow(["" if v is None else csv_cell(v) for v in row])


def _parquet(columns: Mapping[str, Sequence], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise AdvbenchError(f"--format parquet needs pyarrow: {PARQUET_EXTRA} (or export --format csv)") from None

    types = {"text": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_()}

    def kind(name: str):  # the schema's type (advbench.schema); others inferred
        try:
            return types[schema.column_kind(name)]
        except KeyError:
            return None

    table = pa.table({name: pa.array(list(values), type=kind(name)) for name, values in columns.items()})
    pq.write_table(table, path)
