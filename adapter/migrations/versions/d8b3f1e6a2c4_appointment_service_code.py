"""appointment.service_code: the service booked (HL7 AIS-3, FHIR serviceType)

Rules may be limited to some services (config/rules.yaml ``services``), pre-visit
instructions are per service (config/services.yaml) and a recall is moot once the same
service is booked again: all read the code stored with the appointment. Existing rows
have none ("").

Revision ID: d8b3f1e6a2c4
Revises: c7e2f4a9d1b5
Create Date: 2026-11-28 03:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'd8b3f1e6a2c4'
down_revision = 'c7e2f4a9d1b5'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('appointment') as batch_op:
        batch_op.add_column(sa.Column('service_code', sa.String(length=200), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('appointment') as batch_op:
        batch_op.drop_column('service_code')
