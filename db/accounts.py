"""Users and API tokens: argon2 password hashes, tokens stored only as SHA-256."""
import hashlib
import logging
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ROLES, ApiToken, User, utcnow
from db.session import audit

logger = logging.getLogger(__name__)
_hasher = PasswordHasher()


def create_user(session: Session, username: str, role: str, password: str | None,
                actor_id: int | None = None) -> User:
    """Add a user; without a password the account can only use API tokens."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not username or len(username) > 80:
        raise ValueError("username must be 1 to 80 characters")
    if session.scalar(select(User).where(User.username == username)):
        raise ValueError(f"user {username!r} already exists")
    # An unusable hash: no password verifies against it.
    password_hash = _hasher.hash(password) if password else "!"
    user = User(username=username, role=role, password_hash=password_hash)
    session.add(user)
    session.flush()
    audit(session, actor_id, "user.create", "user", user.id, username=username, role=role)
    return user


def check_password(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if user is None or user.password_hash == "!":
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def issue_token(session: Session, user: User, name: str = "default", actor_id: int | None = None) -> str:
    """Create a token and return it in clear: the only time it is ever shown."""
    token = "psk_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, name=name, token_hash=_digest(token))
    session.add(row)
    session.flush()
    audit(session, actor_id if actor_id is not None else user.id, "token.create", "api_token",
          row.id, name=name, user_id=user.id)
    return token


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token),
                                                ApiToken.revoked_at.is_(None)))
    if row is None or not row.user.active:
        return None
    row.last_used_at = utcnow()
    return row.user


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
