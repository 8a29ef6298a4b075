"""The worker's tables: queued jobs, claimed schedule ticks, digest approvals and heartbeats.

Kept apart from :mod:`models` so the worker's schema (migration 0004) reads as one piece.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base, UTCDateTime

# Job statuses.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"

# Digest approval statuses.
APPROVAL_PENDING = "pending"  # the author was asked
APPROVAL_APPROVED = "approved"  # she said yes; the worker composes and sends
APPROVAL_SENT = "sent"  # composed into a campaign (campaign_id)
APPROVAL_LAPSED = "lapsed"  # the next tick came first; the posts wait for the next digest


class Job(Base):
    """Work queued for the worker (by the dashboard, say), with its progress observable here.

    A worker claims a job with a lease (``claimed_by``, ``claimed_until``) that it renews; a job
    whose worker died goes back to whoever claims next once the lease has run out.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    status: Mapped[str] = mapped_column(String(16), default=JOB_QUEUED)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[str | None] = mapped_column(Text)  # JSON, once done
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DigestTick(Base):
    """One firing of the digest schedule, claimed by the first worker to insert it: the
    primary key makes that insert succeed once, on SQLite and PostgreSQL alike."""

    __tablename__ = "digest_ticks"

    tick_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    claimed_by: Mapped[str] = mapped_column(String(100))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome: Mapped[str | None] = mapped_column(Text)  # what the tick did, in words


class DigestApproval(Base):
    """A digest waiting for the author's yes: prepared at a tick, valid until the next one."""

    __tablename__ = "digest_approvals"

    id: Mapped[int] = mapped_column(primary_key=True)
    tick_at: Mapped[datetime] = mapped_column(UTCDateTime(), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=APPROVAL_PENDING, index=True)
    subject: Mapped[str] = mapped_column(String(998))
    post_ids: Mapped[str] = mapped_column(Text)  # JSON list: exactly the posts approved
    html: Mapped[str] = mapped_column(Text)  # the preview the author saw
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))


class WorkerHeartbeat(Base):
    """What a worker last said about itself, for ``/healthz`` and ``worker --status``."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_tick: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_tick: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_action: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
