"""add evaluation to cells: an attack made as an evaluation set (scored, never trained on)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("evaluation", sa.Boolean, nullable=False, server_default="0"))  # "0": false for SQLite and PostgreSQL alike


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("evaluation")
