"""Every route x {anonymous, uploader, other department's uploader, reviewer, admin}."""
import io

import pytest

from tests.helpers import bearer, zip_bytes
from tests.security.corpus import encode, film

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ROLES = ("anonymous", "uploader", "other", "reviewer", "admin")
PUBLIC = "public"
SIGNED_IN = ("uploader", "other", "reviewer", "admin")
UPLOADERS = ("uploader", "other", "admin")
REVIEWERS = ("reviewer", "admin")
ADMIN = ("admin",)


def _film(world):
    return {"data": {"files": [(io.BytesIO(encode(film(seed=next(world.counter)), "PNG")), "film.png")]}}


def _new_user(world):
    return {"data": {"username": f"new{next(world.counter)}", "role": "uploader",
                     "department": world.ids["department"]}}


def _sample(world):
    archive = zip_bytes({"NORMAL/a.png": encode(film(seed=next(world.counter)), "PNG")})
    return {"data": {"department": "Radiology", "miss_rate": "0.05", "sample": (io.BytesIO(archive), "s.zip")}}


def _form(**fields):
    return lambda world: {"data": {key: value(world) if callable(value) else value for key, value in fields.items()}}


# (method, rule, path template, status when allowed, who is allowed, department-scoped, body)
ROUTES = [
    ("GET", "/", "/", 302, SIGNED_IN, False, None),
    ("GET", "/login", "/login", 200, PUBLIC, False, None),
    ("POST", "/login", "/login", 401, PUBLIC, False,
     _form(username=lambda w: f"nobody{next(w.counter)}", password="wrong-password")),
    ("POST", "/logout", "/logout", 302, SIGNED_IN, False, None),
    ("GET", "/session/ping", "/session/ping", 200, SIGNED_IN, False, None),
    ("GET", "/healthz", "/healthz", 200, PUBLIC, False, None),
    ("GET", "/metrics", "/metrics", 200, PUBLIC, False, None),  # counts only, no patient data (web/metrics.py)
    ("GET", "/static/<path:filename>", "/static/style.css", 200, PUBLIC, False, None),
    ("GET", "/batches", "/batches", 200, SIGNED_IN, False, None),
    ("GET", "/upload", "/upload", 200, UPLOADERS, False, None),
    ("POST", "/upload", "/upload", 302, UPLOADERS, False, _film),
    ("GET", "/batches/<int:batch_id>", "/batches/{batch}", 200, SIGNED_IN, True, None),
    ("GET", "/studies/<int:study_id>/<kind>.png", "/studies/{study}/thumb.png", 200, SIGNED_IN, True, None),
    ("GET", "/review/", "/review/", 200, REVIEWERS, False, None),
    ("GET", "/qa", "/qa", 200, REVIEWERS, False, None),
    # The tiny test bundle has no drift reference, so there is no chart to draw: 404 for those allowed.
    ("GET", "/qa/drift/<path:department>.png", "/qa/drift/Radiology.png", 404, REVIEWERS, False, None),
    ("GET", "/review/<int:study_id>", "/review/{study}", 200, REVIEWERS, True, None),
    ("GET", "/review/all", "/review/all", 200, REVIEWERS, False, None),
    ("GET", "/review/<int:study_id>/film", "/review/{study}/film", 200, REVIEWERS, True, None),
    ("POST", "/review/<int:study_id>/claim", "/review/{study}/claim", 200, REVIEWERS, True, None),
    ("POST", "/review/<int:study_id>", "/review/{study}", 302, REVIEWERS, True,
     _form(decision="normal", note="matrix")),
    ("POST", "/api/v1/batches", "/api/v1/batches", 202, UPLOADERS, False, _film),
    ("GET", "/api/v1/batches/<int:batch_id>", "/api/v1/batches/{batch}", 200, SIGNED_IN, True, None),
    ("GET", "/api/v1/batches/<int:batch_id>.csv", "/api/v1/batches/{batch}.csv", 200, SIGNED_IN, True, None),
    ("GET", "/api/v1/batches/<int:batch_id>/rejections.csv", "/api/v1/batches/{batch}/rejections.csv", 200,
     SIGNED_IN, True, None),
    ("GET", "/api/v1/studies/<int:study_id>/fhir", "/api/v1/studies/{study}/fhir", 200, SIGNED_IN, True, None),
    ("GET", "/api/v1/batches", "/api/v1/batches", 200, SIGNED_IN, False, None),
    ("GET", "/api/v1/results", "/api/v1/results", 200, SIGNED_IN, False, None),
    ("GET", "/api/v1/results/<int:result_id>", "/api/v1/results/{result}", 200, SIGNED_IN, True, None),
    ("GET", "/api/v1/results/<int:result_id>/fhir", "/api/v1/results/{result}/fhir", 200, SIGNED_IN, True, None),
    ("GET", "/api/v1/review", "/api/v1/review", 200, REVIEWERS, False, None),
    ("POST", "/api/v1/studies/<int:study_id>/review", "/api/v1/studies/{study}/review", 201, REVIEWERS, True,
     lambda w: {"json": {"decision": "pneumonia", "note": "matrix"}}),
    ("POST", "/dicomweb/studies", "/dicomweb/studies", 415, UPLOADERS, False,
     lambda w: {"data": b"not multipart", "content_type": "text/plain"}),
    # DICOMweb: the matrix's data hold no DICOM, so retrieving an instance is 404 for those allowed.
    ("POST", "/dicomweb/studies/<study>",
     "/dicomweb/studies/1.2.3", 415, UPLOADERS, False, lambda w: {"data": b"not multipart", "content_type": "text/plain"}),
    ("GET", "/dicomweb/studies",
     "/dicomweb/studies", 200, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series",
     "/dicomweb/studies/1.2.3/series", 200, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/instances",
     "/dicomweb/studies/1.2.3/instances", 200, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>/instances",
     "/dicomweb/studies/1.2.3/series/1.2.4/instances", 200, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>",
     "/dicomweb/studies/1.2.3", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/metadata",
     "/dicomweb/studies/1.2.3/metadata", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>",
     "/dicomweb/studies/1.2.3/series/1.2.4", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>/metadata",
     "/dicomweb/studies/1.2.3/series/1.2.4/metadata", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>/instances/<instance>",
     "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>/instances/<instance>/metadata",
     "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/metadata", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>/instances/<instance>/frames/<frames>",
     "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>/instances/<instance>/rendered",
     "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/rendered", 404, SIGNED_IN, False, None),
    ("GET", "/dicomweb/studies/<study>/series/<series>/instances/<instance>/frames/<frames>/rendered",
     "/dicomweb/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1/rendered", 404, SIGNED_IN, False, None),
    ("GET", "/admin/", "/admin/", 302, ADMIN, False, None),
    ("GET", "/admin/users", "/admin/users", 200, ADMIN, False, None),
    ("POST", "/admin/users", "/admin/users", 302, ADMIN, False, _new_user),
    ("POST", "/admin/users/<int:user_id>", "/admin/users/{spare_user}", 302, ADMIN, False,
     _form(role="uploader", department=lambda w: w.ids["department"])),
    ("POST", "/admin/users/<int:user_id>/password", "/admin/users/{spare_user}/password", 302, ADMIN, False,
     _form(password="violet ledger tramway")),
    ("GET", "/admin/departments", "/admin/departments", 200, ADMIN, False, None),
    ("POST", "/admin/departments", "/admin/departments", 302, ADMIN, False,
     _form(name=lambda w: f"Ward {next(w.counter)}")),
    ("POST", "/admin/departments/<int:department_id>", "/admin/departments/{department}", 302, ADMIN, False,
     _form(name="Radiology")),
    ("POST", "/admin/users/<int:user_id>/active", "/admin/users/{spare_user}/active", 302, ADMIN, False, _form()),
    ("POST", "/admin/users/<int:user_id>/unlock", "/admin/users/{spare_user}/unlock", 302, ADMIN, False, _form()),
    ("GET", "/admin/tokens", "/admin/tokens", 200, ADMIN, False, None),
    ("POST", "/admin/tokens", "/admin/tokens", 200, ADMIN, False,
     _form(user_id=lambda w: w.ids["spare_user"], name=lambda w: f"t{next(w.counter)}")),
    ("POST", "/admin/tokens/<int:token_id>/revoke", "/admin/tokens/{spare_token}/revoke", 302, ADMIN, False,
     _form()),
    ("GET", "/admin/audit", "/admin/audit", 200, ADMIN, False, None),
    ("GET", "/admin/audit.csv", "/admin/audit.csv", 200, ADMIN, False, None),
    ("GET", "/admin/calibration", "/admin/calibration", 200, ADMIN, False, None),
    ("POST", "/admin/calibration", "/admin/calibration", 302, ADMIN, False, _sample),
    ("POST", "/admin/calibration/<int:record_id>/activate", "/admin/calibration/{calibration}/activate", 302, ADMIN,
     False, _form()),
    ("GET", "/admin/calibration/<int:record_id>/roc.png", "/admin/calibration/{calibration}/roc.png", 200, ADMIN,
     False, None),
]


def expected(route, role: str) -> int:
    _, _, path, ok, allowed, scoped, _ = route
    if allowed == PUBLIC:
        return ok
    if role == "anonymous":
        return 401 if path.startswith(("/api/", "/dicomweb/")) else 302
    if role not in allowed:
        return 403
    if scoped and role == "other":
        return 404
    return ok


@pytest.fixture
def matrix_client(app):
    app.config["WTF_CSRF_ENABLED"] = False  # CSRF has its own test; here only who may do what
    return app.test_client()


def test_every_route_is_in_the_matrix(app):
    routes = {(method, rule.rule) for rule in app.url_map.iter_rules()
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == {(method, rule) for method, rule, *_ in ROUTES}


@pytest.mark.parametrize("role", ROLES)
def test_route_by_role(matrix_client, world, role, capsys):
    failures = []
    for route in ROUTES:
        method, rule, path, _, _, _, body = route
        kwargs = {"headers": bearer(world.tokens[role]) if world.tokens[role] else {}}
        if body is not None:
            kwargs.update(body(world))
        response = matrix_client.open(path.format(**world.ids), method=method, **kwargs)
        if response.status_code != expected(route, role):
            failures.append(f"{method} {path}: {response.status_code}, expected {expected(route, role)}")
        if response.status_code == 302 and role == "anonymous" and rule not in ("/login",):
            assert "/login" in response.headers["Location"], (method, path)
    assert not failures, f"{role}: " + "; ".join(failures)
    with capsys.disabled():
        print(f"\n[access matrix] {role}: {len(ROUTES)} routes checked")


def test_other_departments_objects_look_like_missing_ones(matrix_client, world):
    other = bearer(world.tokens["other"])
    for template in ("/api/v1/batches/{}", "/batches/{}"):
        hidden = matrix_client.get(template.format(world.ids["batch"]), headers=other)
        missing = matrix_client.get(template.format(999999), headers=other)
        assert hidden.status_code == missing.status_code == 404 and hidden.data == missing.data
    listing = matrix_client.get("/batches", headers=other).data.decode()
    assert f'data-batch="{world.ids["batch"]}"' not in listing
    mine = matrix_client.get("/batches", headers=bearer(world.tokens["uploader"])).data.decode()
    assert f'data-batch="{world.ids["batch"]}"' in mine
