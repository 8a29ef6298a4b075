"""bounces and complaints: bounce records, webhook replay guard

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.String(length=16), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("occurred_at", newsletter.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"]),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bounce_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_bounce_records_subscriber_time", ["subscriber_id", "occurred_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_bounce_records_campaign_id"), ["campaign_id"], unique=False
        )
    op.create_table(
        "webhook_replays",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("seen_at", newsletter.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("webhook_replays", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_replays_seen_at"), ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_replays", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_replays_seen_at"))
    op.drop_table("webhook_replays")
    with op.batch_alter_table("bounce_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bounce_records_campaign_id"))
        batch_op.drop_index("ix_bounce_records_subscriber_time")
    op.drop_table("bounce_records")
