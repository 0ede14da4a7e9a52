"""idempotency keys per user

Revision ID: e7bb5d2824c6
Revises: eab9d3fc4b63
Create Date: 2026-12-07 03:11:01.303588
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# revision identifiers, used by Alembic.
revision: str = 'e7bb5d2824c6'
down_revision: str | Sequence[str] | None = 'eab9d3fc4b63'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIMARY_KEY = "idempotency_keys_pkey"
"""PostgreSQL's name for the table's primary key (SQLite's has none)."""


def upgrade() -> None:
    """Each user gets a key space of their own: the primary key becomes (user_id, key). A
    stored key takes the user of the order it made; one whose order is gone is dropped."""
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('user_id', sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE idempotency_keys SET user_id ="
        " (SELECT orders.user_id FROM orders WHERE orders.id = idempotency_keys.order_id)"
    )
    op.execute("DELETE FROM idempotency_keys WHERE user_id IS NULL")
    _primary_key(['user_id', 'key'], user_id_nullable=False)


def downgrade() -> None:
    """One key space again: of the users who share a key, the first to use it keeps it."""
    op.execute(
        "DELETE FROM idempotency_keys WHERE EXISTS (SELECT 1 FROM idempotency_keys AS first"
        " WHERE first.key = idempotency_keys.key AND (first.created_at < idempotency_keys.created_at"
        " OR (first.created_at = idempotency_keys.created_at"
        " AND first.user_id < idempotency_keys.user_id)))"
    )
    _primary_key(['key'], user_id_nullable=True)
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_column('user_id')


def _primary_key(columns: list[str], *, user_id_nullable: bool) -> None:
    """Replace the table's primary key."""
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_constraint(PRIMARY_KEY, 'idempotency_keys', type_='primary')
        op.alter_column(
            'idempotency_keys',
            'user_id',
            existing_type=sa.String(length=64),
            nullable=user_id_nullable,
        )
        op.create_primary_key(PRIMARY_KEY, 'idempotency_keys', columns)
        return
    # SQLite cannot alter a key: the table is copied into this shape (batch mode)
    shape = sa.Table(
        'idempotency_keys',
        sa.MetaData(),
        sa.Column('user_id', sa.String(length=64), nullable=user_id_nullable),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('request_hash', sa.String(length=64), nullable=False),
        sa.Column('order_id', sa.String(length=36), nullable=False),
        sa.Column('response', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*columns),
    )
    with op.batch_alter_table('idempotency_keys', copy_from=shape, recreate='always'):
        pass
