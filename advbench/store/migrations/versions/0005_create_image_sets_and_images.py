"""create image_sets and images: per-image results keyed by the cell's content hash

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_sets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cell_key", sa.String(64), nullable=False, unique=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("set_id", sa.Integer, sa.ForeignKey("image_sets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("origin", sa.String(200), nullable=False),
        sa.Column("split", sa.String(20), nullable=False),
        sa.Column("y", sa.Integer, nullable=False),
        sa.Column("truth", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("decision", sa.Integer, nullable=True),
        sa.Column("label", sa.Integer, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("images")
    op.drop_table("image_sets")
