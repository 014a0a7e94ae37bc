"""`pneumoscreen users create --department`: the department is created once and the user put in it."""
from click.testing import CliRunner
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Department, User
from db.session import make_engine, make_session_factory
from pneumoscreen.cli import main


def test_users_create_with_department(tmp_path):
    url = f"sqlite:///{tmp_path / 'var' / 'pneumoscreen.db'}"
    env = {"PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "DATABASE_URL": url}
    (tmp_path / "var").mkdir()
    upgrade(url)
    runner = CliRunner()
    for name in ("ann", "bob"):
        result = runner.invoke(main, ["users", "create", name, "--role", "uploader", "--department", "Radiology"],
                               env=env)
        assert result.exit_code == 0, result.output
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        departments = session.scalars(select(Department)).all()
        users = session.scalars(select(User)).all()
    engine.dispose()
    assert [d.name for d in departments] == ["Radiology"]
    assert {u.department_id for u in users} == {departments[0].id}
