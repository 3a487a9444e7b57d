"""the HL7 error code of a message that could not be processed

An ACK sent after processing (``ack_timing: processed``) or as an application ACK
carried ERR-3 207 or 200 whatever the reason; the code now travels with the reason.

Revision ID: f5c2d8e1a7b4
Revises: f3b8c1d4a6e2
Create Date: 2026-11-27 14:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'f5c2d8e1a7b4'
down_revision = 'f3b8c1d4a6e2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbound_message') as batch_op:
        batch_op.add_column(sa.Column('error_code', sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('inbound_message') as batch_op:
        batch_op.drop_column('error_code')
