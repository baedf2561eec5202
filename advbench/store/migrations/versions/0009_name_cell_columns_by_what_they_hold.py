"""name cell columns by what they hold: imageset, entry, family, plugin, operation,
operation_group, feature_group and correction_group in place of attack and transform

``attack`` held an image set's label and becomes ``imageset``; the attack entry, its family and
(already a column) its budget and target were packed into that label ("pgd-grid@0.004",
"eot-pgd@0.008>svm/differences/JPEG") and are unpacked here, once, into ``entry`` and
``family``; the entry's attack plugin is read from the run's stored config. Attack cells of
evaluation sets written before 0007 get their ``evaluation`` flag (a budget, or adaptive).

``transform`` held an operation (predict cells) or a feature group (detect, subset,
adaptive and score cells of a detector) or a corrector's group (correct cells, score cells of a
corrector): each goes to its own column. Stores written before this revision never held a
predict cell's transform group nor the detector group of a pipeline's score cell: those stay "".

Revision ID: 0009
Revises: 0008
"""

import tomllib

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NEW = ("imageset", "entry", "family", "plugin", "operation", "operation_group", "feature_group", "correction_group")
IMAGESET_STAGES = ("attack", "adaptive", "robust", "predict", "score")


def _entry_and_family(label: str, budget: float | None) -> tuple[str, str]:
    """"eot-pgd@0.008>svm/differences/JPEG" -> ("eot-pgd@0.008", "eot-pgd"); the clean set: ("", "")."""
    if label in ("", "clean"):
        return "", ""
    entry = label.split(">", 1)[0]
    return entry, entry.rsplit("@", 1)[0] if budget is not None and "@" in entry else entry


def _plugins(config_text: str) -> dict[str, str]:
    """Attack label (its 'name', else its plugin) -> plugin, of a stored benchmark config."""
    try:
        config = tomllib.loads(config_text or "")
    except tomllib.TOMLDecodeError:
        return {}
    tables = [t for section in ("attacks", "adaptive") for t in config.get(section) or [] if isinstance(t, dict)]
    return {str(t.get("name") or t["plugin"]): str(t["plugin"]) for t in tables if t.get("plugin")}


def _plugin(plugins: dict[str, str], family: str) -> str:
    """A family's plugin; a family of a transform-style grid carries "@value" suffixes."""
    return plugins.get(family) or plugins.get(family.split("@", 1)[0], "")


def _split_transform(stage: str, transform: str, detector: str, corrector: str) -> dict[str, str]:
    if stage == "predict":
        return {"operation": transform}
    if stage == "correct" or (stage == "score" and corrector):  # a pipeline's detector group was not stored
        return {"correction_group": transform}
    if stage in ("detect", "subset", "adaptive", "robust", "score"):
        return {"feature_group": transform}
    return {}


def _drop_columns(*names: str) -> None:
    """ALTER TABLE ... DROP COLUMN in place (SQLite >= 3.35, PostgreSQL): a batch migration would
    copy the table and drop the old one, and with foreign keys on, that drop deletes every metric
    of every cell (ON DELETE CASCADE)."""
    for name in names:
        op.execute(f"ALTER TABLE cells DROP COLUMN {name}")


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        for name in NEW:
            batch.add_column(sa.Column(name, sa.String(200), nullable=False, server_default=""))
    conn = op.get_bind()
    written = (*NEW, "threat", "target", "evaluation")
    cells = sa.table("cells", *(sa.column(c) for c in ("id", "run_id", "stage", "attack", "transform", "detector",
                                                        "corrector", "budget", *written)))
    runs = sa.table("runs", sa.column("id"), sa.column("config_text"))
    plugins = {run_id: _plugins(text) for run_id, text in conn.execute(sa.select(runs.c.id, runs.c.config_text))}
    rows = conn.execute(sa.select(cells.c.id, cells.c.run_id, cells.c.stage, cells.c.attack, cells.c.transform,
                                  cells.c.detector, cells.c.corrector, cells.c.budget, cells.c.threat, cells.c.target,
                                  cells.c.evaluation)).all()
    updates = []
    for row in rows:
        values = {"threat": row.threat or "", "target": row.target or "",
                  "evaluation": bool(row.evaluation) or row.stage == "adaptive"
                  or (row.stage == "attack" and row.budget is not None)}
        values |= _split_transform(row.stage, row.transform or "", row.detector or "", row.corrector or "")
        label = row.attack or ""
        if row.stage in IMAGESET_STAGES:
            entry, family = _entry_and_family(label, row.budget)
            values |= {"imageset": label, "entry": entry, "family": family,
                       "plugin": _plugin(plugins.get(row.run_id, {}), family)}
            if ">" in label and not values["target"]:  # written before 0003 stored the threat and target
                values |= {"threat": "adaptive", "target": label.split(">", 1)[1]}
            elif not values["threat"] and row.stage in ("attack", "score"):
                values["threat"] = "oblivious" if label != "clean" else ""
        updates.append({"row_id": row.id, **{f"new_{name}": values.get(name, "") for name in written}})
    if updates:  # bound names differ from the columns' (SQLAlchemy reserves those for the SET clause)
        conn.execute(cells.update().where(cells.c.id == sa.bindparam("row_id"))
                     .values({name: sa.bindparam(f"new_{name}") for name in written}), updates)
    _drop_columns("attack", "transform")


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("attack", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("transform", sa.String(200), nullable=False, server_default=""))
    cells = sa.table("cells", *(sa.column(c) for c in ("attack", "transform", *NEW)))
    op.get_bind().execute(cells.update().values(
        attack=cells.c.imageset,
        transform=sa.func.coalesce(sa.func.nullif(cells.c.operation, ""), sa.func.nullif(cells.c.correction_group, ""),
                                   cells.c.feature_group)))
    _drop_columns(*reversed(NEW))
