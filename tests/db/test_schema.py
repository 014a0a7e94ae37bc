"""Migrations and accounts, on SQLite and PostgreSQL alike."""
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from db.accounts import check_password, create_user, issue_token, user_for_token
from db.migrate import heads
from db.models import AuditEvent, Base
from db.session import make_engine, make_session_factory


def test_one_alembic_head():
    assert len(heads()) == 1


def test_migrations_match_the_models(database_url):
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def test_passwords_are_hashed_and_checked(sessions):
    with sessions.begin() as session:
        user = create_user(session, "ana", "reviewer", "correct horse")
        assert "correct horse" not in user.password_hash
    with sessions() as session:
        assert check_password(session, "ana", "correct horse").username == "ana"
        assert check_password(session, "ana", "wrong") is None
        assert check_password(session, "nobody", "correct horse") is None


def test_tokens_are_stored_hashed_and_audited(sessions):
    with sessions.begin() as session:
        user = create_user(session, "bot", "uploader", None)
        token = issue_token(session, user, "pacs-bridge")
    with sessions.begin() as session:
        assert user_for_token(session, token).username == "bot"
        assert user_for_token(session, token + "x") is None
        stored = [t.token_hash for t in session.get(type(user), user.id).tokens]
        assert token not in stored and len(stored[0]) == 64
        actions = session.scalars(select(AuditEvent.action)).all()
        assert actions == ["user.create", "token.create"]
    with sessions() as session:
        assert check_password(session, "bot", "") is None


def test_bad_role_and_duplicate_user_are_refused(sessions):
    with sessions.begin() as session:
        with pytest.raises(ValueError, match="role must be one of"):
            create_user(session, "x", "superuser", "a long passphrase")
        create_user(session, "x", "admin", "a long passphrase")
        with pytest.raises(ValueError, match="already exists"):
            create_user(session, "x", "admin", "a long passphrase")


@pytest.mark.parametrize("password, problem", [
    (" ", "at least 8 characters"), ("        ", "must not start or end with a space"),
    (" padded passphrase", "must not start or end with a space"), ("password", "too easy to guess"),
    ("password123", "too easy to guess"), ("qwertyuiop", "too easy to guess"), ("ana12345", "too easy to guess")])
def test_weak_passwords_are_refused_with_a_reason(sessions, password, problem):
    with sessions.begin() as session:
        with pytest.raises(ValueError, match=problem):
            create_user(session, "ana", "reviewer", password)
        assert create_user(session, "ana", "reviewer", "violet ledger tramway").password_hash != "!"
