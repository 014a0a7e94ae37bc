"""Users, departments and API tokens: argon2 password hashes, tokens stored only as SHA-256."""
import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload
from zxcvbn import zxcvbn

from db.models import ROLES, ApiToken, AuditEvent, Department, User, as_utc, utcnow
from db.session import audit

logger = logging.getLogger(__name__)
MIN_PASSWORD = 8
# zxcvbn scores 0-4; 2 and up resist online guessing, which the login throttle limits further.
MIN_STRENGTH = 2
_hasher = PasswordHasher()


def ensure_department(session: Session, name: str, actor_id: int | None = None) -> Department:
    """The department called `name`, created (and audited) when it does not exist yet."""
    name = _department_name(name)
    department = department_named(session, name)
    if department is None:
        department = Department(name=name)
        session.add(department)
        session.flush()
        audit(session, actor_id, "department.create", "department", department.id, name=name)
    return department


def named(name: str):
    """A filter on Department for `name` in any case and spacing: "radiology  north" is "Radiology North"."""
    return func.lower(Department.name) == " ".join(name.split()).lower()


def department_named(session: Session, name: str) -> Department | None:
    """The department called `name` in any case."""
    return session.scalar(select(Department).where(named(name)))


def rename_department(session: Session, department: Department, name: str, actor_id: int | None) -> None:
    """Rename a department; ValueError when another department already has the name (in any case)."""
    name = _department_name(name)
    other = department_named(session, name)
    if other is not None and other.id != department.id:
        raise ValueError(f"department {other.name!r} already exists")
    if name != department.name:
        audit(session, actor_id, "department.rename", "department", department.id, old=department.name, name=name)
        department.name = name


def _department_name(name: str) -> str:
    name = " ".join(name.split())  # "Radiology  North " is "Radiology North"
    if not name or len(name) > 120:
        raise ValueError("department name must be 1 to 120 characters")
    return name


def update_user(session: Session, user: User, role: str, department_id: int | None, actor_id: int | None) -> None:
    """Change a user's role and department; their sessions end so the new rights apply at once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if department_id is not None and session.get(Department, department_id) is None:
        raise ValueError("no such department")
    if (role, department_id) != (user.role, user.department_id):
        audit(session, actor_id, "user.update", "user", user.id, role=role, department_id=department_id,
              was_role=user.role, was_department_id=user.department_id)
        user.role, user.department_id = role, department_id
        end_sessions(user)


def reset_password(session: Session, user: User, password: str, actor_id: int | None) -> None:
    """An admin sets a temporary password (the same strength rule applies); the user's sessions end."""
    if problem := password_problem(password, user.username):
        raise ValueError(problem)
    user.password_hash = _hasher.hash(password)
    end_sessions(user)
    audit(session, actor_id, "user.password_reset", "user", user.id)


def create_user(session: Session, username: str, role: str, password: str | None,
                actor_id: int | None = None, department_id: int | None = None) -> User:
    """Add a user; without a password the account can only use API tokens."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not username or len(username) > 80:
        raise ValueError("username must be 1 to 80 characters")
    if session.scalar(select(User).where(User.username == username)):
        raise ValueError(f"user {username!r} already exists")
    if password is not None and (problem := password_problem(password, username)):
        raise ValueError(problem)
    # An unusable hash: no password verifies against it.
    password_hash = _hasher.hash(password) if password else "!"
    user = User(username=username, role=role, password_hash=password_hash, department_id=department_id)
    session.add(user)
    session.flush()
    audit(session, actor_id, "user.create", "user", user.id, username=username, role=role,
          department_id=department_id)
    return user


def password_problem(password: str, username: str) -> str | None:
    """Why `password` will not do, or None. Passwords are used exactly as typed, never stripped: one that
    starts or ends with white space is refused rather than silently changed. zxcvbn estimates how guessable
    it is (common passwords, words, names, keyboard patterns, the username)."""
    if len(password) < MIN_PASSWORD:
        return f"password must be at least {MIN_PASSWORD} characters"
    if password != password.strip():
        return "password must not start or end with a space"
    strength = zxcvbn(password[:100], user_inputs=[username, "pneumoscreen", "radiology"])
    if strength["score"] < MIN_STRENGTH:
        advice = strength["feedback"]["warning"] or "it is easy to guess"
        return f"password is too easy to guess ({advice.rstrip('.')}): use a few unrelated words"
    return None


def check_password(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if user is None or user.password_hash == "!":
        # Hash anyway, so a wrong username takes as long as a wrong password.
        _hasher.hash(password)
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def failed_attempts(session: Session, username: str, address: str | None, since: datetime) -> tuple[int, int]:
    """Login attempts that did not succeed since `since` (or since an admin unlocked the username):
    (for this username, from this address), counted from the audit log. Attempts are written before the
    password is checked, so parallel guesses count each other (web/auth.py)."""
    unlocked = session.scalar(select(func.max(AuditEvent.at)).where(
        AuditEvent.action == "user.unlock", AuditEvent.detail["username"].as_string() == username))
    name_since = max(since, as_utc(unlocked)) if unlocked else since

    def unanswered(key: str, value: str, after: datetime) -> int:
        def count(action: str) -> int:
            return session.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.action == action, AuditEvent.at >= after,
                AuditEvent.detail[key].as_string() == value)) or 0
        return count("user.login_attempt") - count("user.login")

    return unanswered("username", username, name_since), unanswered("address", address, since) if address else 0


def end_sessions(user: User) -> None:
    """Every session cookie issued to `user` so far stops working (logout, disable, enable)."""
    user.session_epoch = (user.session_epoch or 0) + 1


def login_window(minutes: int) -> datetime:
    return utcnow() - timedelta(minutes=minutes)


def issue_token(session: Session, user: User, name: str = "default", actor_id: int | None = None,
                expires_at: datetime | None = None) -> str:
    """Create a token and return it in clear: the only time it is ever shown. None for `expires_at`: never."""
    name = (name or "default").strip()[:80] or "default"
    token = "psk_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=_digest(token), expires_at=expires_at)
    session.add(row)
    session.flush()
    audit(session, actor_id if actor_id is not None else user.id, "token.create", "api_token",
          row.id, name=name, user_id=user.id, expires_at=expires_at.isoformat() if expires_at else None)
    return token


def revoke_token(session: Session, token_id: int, actor_id: int | None) -> ApiToken:
    """Revoke a token for good (idempotent); raises LookupError when there is no such token."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise LookupError(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit(session, actor_id, "token.revoke", "api_token", row.id, name=row.name, user_id=row.user_id)
    return row


def set_active(session: Session, user: User, active: bool, actor_id: int | None) -> None:
    """Disable or re-enable an account; a disabled account's sessions and tokens stop working."""
    if user.active != active:
        user.active = active
        end_sessions(user)
        audit(session, actor_id, "user.enable" if active else "user.disable", "user", user.id)


# A token's last use is kept to the minute: a script's every request is not a database write.
TOKEN_USE_RECORDED_EVERY = timedelta(minutes=1)


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token),
                                                ApiToken.revoked_at.is_(None)).options(joinedload(ApiToken.user)))
    if row is None or not row.user.active or token_expired(row):
        return None
    now = utcnow()
    if row.last_used_at is None or now - as_utc(row.last_used_at) >= TOKEN_USE_RECORDED_EVERY:
        row.last_used_at = now
    return row.user


def token_expired(row: ApiToken, now: datetime | None = None) -> bool:
    return row.expires_at is not None and as_utc(row.expires_at) <= (now or utcnow())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
