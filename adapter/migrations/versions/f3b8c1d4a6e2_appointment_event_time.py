"""appointment.event_at: when the HL7 event that last set an appointment happened

Messages about one appointment arrive out of order (a cancellation overtaking the
booking, a reschedule before the original booking): an older HL7 event must not undo a
newer one. Existing rows keep NULL (not known): the next message applies as before.

Revision ID: f3b8c1d4a6e2
Revises: e4a7b1c9d2f6
Create Date: 2026-11-28 10:00:00
"""
from alembic import op
import sqlalchemy as sa
import adapter.db


revision = 'f3b8c1d4a6e2'
down_revision = 'e4a7b1c9d2f6'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_at', adapter.db.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.drop_column('event_at')
