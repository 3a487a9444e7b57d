"""raw inbound messages in a table of their own

Marking a message processed rewrote its whole row, raw bytes included (SQLite
rewrites a row whole): a 10 MB report was written again under the write lock.

Revision ID: d1f0c2a7e5b3
Revises: ba6e9f49d65c
Create Date: 2026-11-27 04:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'd1f0c2a7e5b3'
down_revision = 'ba6e9f49d65c'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inbound_raw',
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('raw_enc', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['inbound_message.id'], name=op.f('fk_inbound_raw_message_id_inbound_message'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_inbound_raw'))
    )
    op.execute("INSERT INTO inbound_raw (message_id, raw_enc) SELECT id, raw_enc FROM inbound_message WHERE raw_enc IS NOT NULL")
    # Plain ALTER TABLE (SQLite >= 3.35, PostgreSQL): a batch rebuild would drop the
    # table that inbound_raw and application_ack refer to.
    op.execute("ALTER TABLE inbound_message DROP COLUMN raw_enc")


def downgrade() -> None:
    op.add_column('inbound_message', sa.Column('raw_enc', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE inbound_message SET raw_enc = (SELECT raw_enc FROM inbound_raw WHERE inbound_raw.message_id = inbound_message.id)")
    op.drop_table('inbound_raw')
