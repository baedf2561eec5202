"""add the two logits of binary detectors (CNN detectors, Fig. 2) to images

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("logit_0", sa.Float, nullable=True))
        batch.add_column(sa.Column("logit_1", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("logit_1")
        batch.drop_column("logit_0")
