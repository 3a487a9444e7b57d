"""erasure reaches raw messages and provider callbacks as received

An erased patient's HL7 messages and callbacks stayed readable (sealed with the system
key) until the retention purge. Callbacks now record the patients they concerned, and
a message whose raw bytes erasure deleted says so (``raw_erased_at``).

Revision ID: a9e3d7c2b1f4
Revises: f5c2d8e1a7b4
Create Date: 2026-11-27 17:10:00
"""
from alembic import op
import sqlalchemy as sa
import adapter.db


revision = 'a9e3d7c2b1f4'
down_revision = 'f5c2d8e1a7b4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbound_message') as batch_op:
        batch_op.add_column(sa.Column('raw_erased_at', adapter.db.UTCDateTime(), nullable=True))
    op.create_table('webhook_event_patient',
    sa.Column('event_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['webhook_event.id'], name=op.f('fk_webhook_event_patient_event_id_webhook_event'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('event_id', 'patient_id', name=op.f('pk_webhook_event_patient'))
    )
    with op.batch_alter_table('webhook_event_patient', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_event_patient_patient_id'), ['patient_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_event_patient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_event_patient_patient_id'))
    op.drop_table('webhook_event_patient')
    with op.batch_alter_table('inbound_message') as batch_op:
        batch_op.drop_column('raw_erased_at')
