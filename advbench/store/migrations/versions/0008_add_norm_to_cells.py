"""add norm to cells: the norm an imageset's budget is measured in (linf, l2, l1, l0, or "")

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("norm", sa.String(10), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("norm")
