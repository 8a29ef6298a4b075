"""the author's dashboard: accounts, server-side sessions, login attempts, stored settings,
and posts held back from the next digest

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import newsletter.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("totp_secret", sa.String(length=64), nullable=True),
        sa.Column("created_at", newsletter.db.UTCDateTime(), nullable=False),
        sa.Column("password_changed_at", newsletter.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "admin_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", newsletter.db.UTCDateTime(), nullable=False),
        sa.Column("last_seen", newsletter.db.UTCDateTime(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["admin_users.id"]),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_admin_sessions_user_id", "admin_sessions", ["user_id"])
    op.create_table(
        "admin_login_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", newsletter.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_admin_login_attempts_email", "admin_login_attempts", ["email", "occurred_at"]
    )
    op.create_index("ix_admin_login_attempts_ip", "admin_login_attempts", ["ip", "occurred_at"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", newsletter.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("posts") as batch:
        batch.add_column(
            sa.Column("held_until_next", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Reader search by name (the address is unique, so already indexed).
    op.create_index("ix_subscribers_name", "subscribers", ["name"])


def downgrade() -> None:
    op.drop_index("ix_subscribers_name", table_name="subscribers")
    with op.batch_alter_table("posts") as batch:
        batch.drop_column("held_until_next")
    op.drop_table("settings")
    op.drop_index("ix_admin_login_attempts_ip", table_name="admin_login_attempts")
    op.drop_index("ix_admin_login_attempts_email", table_name="admin_login_attempts")
    op.drop_table("admin_login_attempts")
    op.drop_index("ix_admin_sessions_user_id", table_name="admin_sessions")
    op.drop_table("admin_sessions")
    op.drop_table("admin_users")
