"""invoice: what payment reminders read at send time

A FHIR Invoice due from a patient (issued): its status and issue moment in clear, the
amount, currency, number, pagoPA notice code and issuer sealed under the patient's key.

Revision ID: b7d3f9a2c4e1
Revises: d8b3f1e6a2c4
Create Date: 2026-11-28 03:10:00
"""
from alembic import op
import sqlalchemy as sa

import adapter.db


revision = 'b7d3f9a2c4e1'
down_revision = 'd8b3f1e6a2c4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('invoice',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ref', sa.String(length=200), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('issued_at', adapter.db.UTCDateTime(), nullable=False),
    sa.Column('details_enc', sa.LargeBinary(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('sender', sa.String(length=200), nullable=False),
    sa.Column('updated_at', adapter.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], name=op.f('fk_invoice_patient_id_patient'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoice')),
    sa.UniqueConstraint('ref', name=op.f('uq_invoice_ref'))
    )
    with op.batch_alter_table('invoice', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invoice_patient_id'), ['patient_id'], unique=False)
        # The retention purge's: only invoices no longer due.
        batch_op.create_index('ix_invoice_settled', ['updated_at'], unique=False,
                              sqlite_where=sa.text("status != 'issued'"), postgresql_where=sa.text("status != 'issued'"))


def downgrade() -> None:
    with op.batch_alter_table('invoice', schema=None) as batch_op:
        batch_op.drop_index('ix_invoice_settled')
        batch_op.drop_index(batch_op.f('ix_invoice_patient_id'))
    op.drop_table('invoice')
