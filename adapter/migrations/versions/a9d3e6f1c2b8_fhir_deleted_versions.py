"""fhir_resource.deleted: a FHIR delete stored as a version of its own

FHIR R4 §3.1.0.7: a deleted resource keeps its history; a read answers 410 Gone and
an update brings it back. Existing rows are versions with content (false).

Revision ID: a9d3e6f1c2b8
Revises: b2c4e6f8a1d3
Create Date: 2026-11-27 17:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'a9d3e6f1c2b8'
down_revision = 'b2c4e6f8a1d3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('fhir_resource', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('fhir_resource', schema=None) as batch_op:
        batch_op.drop_column('deleted')
