"""indexes for the retention purge

The purge runs every minute in one write transaction. It read every notification,
inbound message, callback and reply each time, whether or not anything had expired:
with 200,000 messages and 800,000 notifications it held SQLite's write lock, which
ACKs wait for, for ~0.3 s a minute. Partial indexes hold only the rows that still
have something to purge.

Revision ID: e4a7b1c9d2f6
Revises: d1f0c2a7e5b3
Create Date: 2026-11-27 11:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'e4a7b1c9d2f6'
down_revision = 'd1f0c2a7e5b3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    kept = {"notification": ("body_enc", "sent_at", "ix_notification_body_kept"),
            "webhook_event": ("request_enc", "received_at", "ix_webhook_event_request_kept"),
            "patient_reply": ("text_enc", "received_at", "ix_patient_reply_text_kept")}
    for table, (held, column, name) in kept.items():
        where = sa.text(f"{held} IS NOT NULL")
        op.create_index(name, table, [column], sqlite_where=where, postgresql_where=where)
    op.create_index(op.f('ix_outbox_message_created_at'), 'outbox_message', ['created_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_outbox_message_created_at'), table_name='outbox_message')
    for table, name in (("patient_reply", "ix_patient_reply_text_kept"), ("webhook_event", "ix_webhook_event_request_kept"),
                        ("notification", "ix_notification_body_kept")):
        op.drop_index(name, table_name=table)
