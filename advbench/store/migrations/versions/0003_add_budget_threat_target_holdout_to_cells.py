"""add budget, threat, target and holdout to cells

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("budget", sa.Float, nullable=True))
        batch.add_column(sa.Column("threat", sa.String(40), nullable=False, server_default=""))
        batch.add_column(sa.Column("target", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("holdout", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        for name in ("holdout", "target", "threat", "budget"):
            batch.drop_column(name)
