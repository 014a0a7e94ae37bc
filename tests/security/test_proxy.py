"""Behind a reverse proxy the login throttle counts the client's address, but only with trusted proxy hops
configured; otherwise a forged X-Forwarded-For is ignored."""
import pytest
from sqlalchemy import select

from core.services import services_of
from db.models import AuditEvent
from tests.helpers import csrf


@pytest.mark.parametrize("hops, address", [(0, "127.0.0.1"), (1, "203.0.113.7")])
def test_the_address_counted_is_the_clients_only_through_trusted_proxies(settings, hops, address):
    from dataclasses import replace

    from pneumoscreen.app import create_app

    app = create_app(settings=replace(settings, proxy_hops=hops))
    client = app.test_client()
    headers = {"X-Forwarded-For": "203.0.113.7"}
    form = client.get("/login", headers=headers)
    client.post("/login", headers=headers, data={"username": "nobody", "password": "wrong-password",
                                                 "csrf_token": csrf(form.data)})
    with services_of(app).sessions() as session:
        detail = session.scalar(select(AuditEvent.detail).where(AuditEvent.action == "user.login_failed"))
    services_of(app).engine.dispose()
    assert detail["address"] == address
