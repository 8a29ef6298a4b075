"""subscriber link key: confirm links name a reader by a random key as well as the id

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_key", sa.String(length=16), nullable=True))
    # Existing readers get a key too, so their next link is bound to them. Links sent before
    # carry none; they are honoured only for a reader created before the link was made.
    connection = op.get_bind()
    subscribers = sa.table(
        "subscribers", sa.column("id", sa.Integer), sa.column("link_key", sa.String)
    )
    ids = connection.execute(sa.select(subscribers.c.id)).scalars().all()
    if ids:
        connection.execute(
            subscribers.update()
            .where(subscribers.c.id == sa.bindparam("sid"))
            .values(link_key=sa.bindparam("key")),
            [{"sid": sid, "key": secrets.token_hex(8)} for sid in ids],
        )


def downgrade() -> None:
    # A plain ALTER TABLE (SQLite 3.35+): rebuilding the table would trip the foreign keys.
    op.drop_column("subscribers", "link_key")
