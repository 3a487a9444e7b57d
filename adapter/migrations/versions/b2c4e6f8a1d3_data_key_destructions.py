"""a count of destroyed data keys, read by every process that caches keys

A patient key destroyed by an erasure in one process stayed usable in another for up to
the cache's 60 s. Each vault now reads this count once per transaction and forgets its
cached patient keys when it changed.

Revision ID: b2c4e6f8a1d3
Revises: a9e3d7c2b1f4
Create Date: 2026-11-27 17:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'b2c4e6f8a1d3'
down_revision = 'a9e3d7c2b1f4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table('data_key_destructions',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_data_key_destructions'))
    )
    op.bulk_insert(table, [{'id': 1, 'count': 0}])
    op.execute("UPDATE data_key_destructions SET count = (SELECT count(*) FROM data_key WHERE destroyed_at IS NOT NULL)")


def downgrade() -> None:
    op.drop_table('data_key_destructions')
