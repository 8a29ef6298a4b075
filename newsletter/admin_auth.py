"""The author's dashboard account: password hashing (argon2id), server-side sessions with an
idle timeout, login throttling counted in the database, and the optional TOTP second factor.

Plain domain code: it takes a session and the current time, and knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .addresses import normalise_address
from .admin_models import AdminLoginAttempt, AdminSession, AdminUser
from .errors import NewsletterError

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 12
MAX_FAILURES = 10  # per account, and per IP address, within the window
THROTTLE_WINDOW = timedelta(minutes=15)
# last_seen is written at most this often: a page view is then a read, not a write.
TOUCH_EVERY = timedelta(minutes=1)

# argon2id with the library's defaults (RFC 9106's second recommended profile).
_hasher = PasswordHasher()


class AdminAuthError(NewsletterError):
    """An account cannot be created or changed as asked; the message says what to do."""


class LoginRefusedError(AdminAuthError):
    """Too many failed logins for this account or from this address: wait for the window."""


@dataclass(frozen=True)
class SignedIn:
    """A new session: the cookie value (shown once, stored only hashed) and its CSRF token."""

    cookie: str
    csrf_token: str
    user_id: int


def _hash_id(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def check_password_rules(password: str) -> None:
    """Raise AdminAuthError for a password too short to resist guessing."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AdminAuthError(
            f"The password must have at least {MIN_PASSWORD_LENGTH} characters; "
            "a few unrelated words make a good one."
        )


def find_user(session: Session, email: str) -> AdminUser | None:
    """The account with this address, or None (an unparseable address has none)."""
    try:
        address = normalise_address(email)
    except NewsletterError:
        return None
    return session.scalar(select(AdminUser).where(AdminUser.email == address))


def create_user(session: Session, email: str, password: str, *, now: datetime) -> AdminUser:
    """Create an author's account; commits. Raises AdminAuthError or InvalidAddressError."""
    address = normalise_address(email)
    check_password_rules(password)
    if find_user(session, address) is not None:
        raise AdminAuthError(
            f"{address} already has an account; change its password with "
            f"`newsletter admin set-password {address}`."
        )
    user = AdminUser(
        email=address, password_hash=_hasher.hash(password), created_at=now, password_changed_at=now
    )
    session.add(user)
    session.commit()
    return user


def set_password(session: Session, email: str, password: str, *, now: datetime) -> AdminUser:
    """Change an account's password and sign out every one of its sessions; commits."""
    check_password_rules(password)
    user = find_user(session, email)
    if user is None:
        raise AdminAuthError(
            f"No dashboard account for {email}; create it with `newsletter admin create`."
        )
    user.password_hash = _hasher.hash(password)
    user.password_changed_at = now
    session.execute(delete(AdminSession).where(AdminSession.user_id == user.id))
    session.commit()
    return user


def set_totp_secret(session: Session, email: str, secret: str | None) -> AdminUser:
    """Turn the second factor on (with ``secret``) or off (None); commits."""
    user = find_user(session, email)
    if user is None:
        raise AdminAuthError(f"No dashboard account for {email}.")
    user.totp_secret = secret
    session.commit()
    return user


def _verify_totp(secret: str, code: str, now: datetime) -> bool:
    import pyotp

    code = "".join(code.split())
    # One step either side: a phone clock a little off still works.
    return bool(code) and pyotp.TOTP(secret).verify(code, for_time=now, valid_window=1)


def _recent_failures(session: Session, by: str, value: str, now: datetime) -> int:
    column = AdminLoginAttempt.email if by == "email" else AdminLoginAttempt.ip
    return int(
        session.scalar(
            select(func.count())
            .select_from(AdminLoginAttempt)
            .where(
                column == value,
                AdminLoginAttempt.outcome == "failed",
                AdminLoginAttempt.occurred_at > now - THROTTLE_WINDOW,
            )
        )
        or 0
    )


def _record(session: Session, email: str, ip: str, outcome: str, now: datetime) -> None:
    session.add(AdminLoginAttempt(email=email[:320], ip=ip[:64], outcome=outcome, occurred_at=now))
    session.commit()
    log.info("admin login %s: email=%r ip=%s at=%s", outcome, email, ip, now.isoformat())


def log_in(
    session: Session, email: str, password: str, *, ip: str, now: datetime, code: str = ""
) -> SignedIn | None:
    """Check a login and open a session; None for a wrong address, password or code.

    Raises LoginRefusedError once an account or an IP address has had MAX_FAILURES failures
    within THROTTLE_WINDOW, whatever the password. Every attempt is recorded and logged.
    """
    key = " ".join(email.split()).lower()[:320]
    if (
        _recent_failures(session, "email", key, now) >= MAX_FAILURES
        or _recent_failures(session, "ip", ip, now) >= MAX_FAILURES
    ):
        _record(session, key, ip, "refused", now)
        raise LoginRefusedError(
            "Too many failed sign-ins for this account or from this network. "
            "Wait 15 minutes and try again."
        )
    user = find_user(session, email)
    ok = False
    if user is not None:
        try:
            ok = _hasher.verify(user.password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if ok and user.totp_secret:
            ok = _verify_totp(user.totp_secret, code, now)
    else:
        # Spend the same time as a real check, so timing does not tell which addresses exist.
        _hasher.hash(password or "x")
    if not ok or user is None:
        _record(session, key, ip, "failed", now)
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    cookie = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    session.add(
        AdminSession(
            id_hash=_hash_id(cookie),
            user_id=user.id,
            csrf_token=csrf_token,
            created_at=now,
            last_seen=now,
            ip=ip[:64],
        )
    )
    _record(session, key, ip, "ok", now)
    return SignedIn(cookie=cookie, csrf_token=csrf_token, user_id=user.id)


@dataclass(frozen=True)
class CurrentSession:
    """The signed-in author, as a request sees her."""

    user_id: int
    email: str
    csrf_token: str


def current_session(
    session: Session, cookie: str | None, *, now: datetime, idle: timedelta
) -> CurrentSession | None:
    """The live session for a cookie, or None; a session idle longer than ``idle`` is deleted."""
    if not cookie:
        return None
    row = session.get(AdminSession, _hash_id(cookie))
    if row is None:
        return None
    if now - row.last_seen > idle:
        session.delete(row)
        session.commit()
        return None
    user = session.get(AdminUser, row.user_id)
    if user is None:
        return None
    if now - row.last_seen >= TOUCH_EVERY:
        row.last_seen = now
        session.commit()
    return CurrentSession(user_id=user.id, email=user.email, csrf_token=row.csrf_token)


def log_out(session: Session, cookie: str | None) -> None:
    """Delete the session behind a cookie (the cookie is then worthless); commits."""
    if cookie:
        session.execute(delete(AdminSession).where(AdminSession.id_hash == _hash_id(cookie)))
        session.commit()
