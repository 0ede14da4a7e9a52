"""outbox parked rows: when and why the relay gave up on a row, and a partial index
that finds the parked ones

Revision ID: bf19bbc5bf90
Revises: f1ea7ef4dffe
Create Date: 2026-12-07 02:06:56.918474
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = 'bf19bbc5bf90'
down_revision: str | Sequence[str] | None = 'f1ea7ef4dffe'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PARKED = sa.text("parked_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("parked_reason", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_outbox_parked", ["id"], unique=False, sqlite_where=PARKED, postgresql_where=PARKED
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_parked", sqlite_where=PARKED, postgresql_where=PARKED)
        batch_op.drop_column("parked_reason")
        batch_op.drop_column("parked_at")
