"""create runs, cells and metrics

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("benchmark", sa.String(200), nullable=False, index=True),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("config_text", sa.Text, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("advbench_version", sa.String(40), nullable=False),
        sa.Column("torch_version", sa.String(40), nullable=False),
        sa.Column("foolbox_version", sa.String(40), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.UniqueConstraint("benchmark", "config_hash", name="uq_runs_benchmark_config"),
    )
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        *(sa.Column(c, sa.String(200), nullable=False) for c in
          ("dataset", "model", "attack", "transform", "feature", "detector")),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("cached", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.UniqueConstraint("run_id", "key", name="uq_cells_run_key"),
    )
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cell_id", sa.Integer, sa.ForeignKey("cells.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("subset", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.UniqueConstraint("cell_id", "name", "subset", name="uq_metrics_cell_name_subset"),
    )


def downgrade() -> None:
    op.drop_table("metrics")
    op.drop_table("cells")
    op.drop_table("runs")
