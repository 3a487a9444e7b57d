"""appointment.time_known: a start given by its day only

An HL7 TS of day precision (``20261201``) was read as that day's 00:00 and the patient
told to come at midnight. Existing rows had a time (true).

Revision ID: c7e2f4a9d1b5
Revises: a9d3e6f1c2b8
Create Date: 2026-11-27 18:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'c7e2f4a9d1b5'
down_revision = 'a9d3e6f1c2b8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('appointment') as batch_op:
        batch_op.add_column(sa.Column('time_known', sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('appointment') as batch_op:
        batch_op.drop_column('time_known')
