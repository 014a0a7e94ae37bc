"""docker-compose.yml cannot run here (no Docker engine): check what parsing can."""
import os
import re
import subprocess
import sys
import tomllib

import requests
import yaml

from pneumoscreen.cli import main
from tests.helpers import REDIS_URL, REPO, free_port, wait_until

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_stack_has_the_services_and_health_checks():
    assert {"postgres", "redis", "migrate", "web", "worker", "worker-gpu"} <= set(SERVICES)
    for name in ("postgres", "redis", "web", "worker", "worker-gpu"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_workers_scale_and_share_storage_with_the_portal():
    for name in ("worker", "worker-gpu"):
        assert "container_name" not in SERVICES[name] and "ports" not in SERVICES[name]
    mounts = {name: SERVICES[name]["volumes"] for name in ("web", "worker", "worker-gpu")}
    assert mounts["web"] == mounts["worker"] == mounts["worker-gpu"] == ["studies:/data"]
    assert "studies" in COMPOSE["volumes"]
    env = SERVICES["web"]["environment"]
    assert env["PNEUMOSCREEN_STORAGE_DIR"].startswith("/data")
    assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert SERVICES["worker"]["environment"] == env


def test_gpu_worker_reserves_an_nvidia_device_and_runs_solo():
    gpu = SERVICES["worker-gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["PNEUMOSCREEN_WORKER_POOL"] == "solo"
    assert gpu["build"]["args"]["EXTRAS"] == "gpu"


def test_commands_exist_in_the_cli_and_services_wait_for_migrations():
    for name in ("migrate", "web", "worker", "worker-gpu"):
        command = SERVICES[name]["command"]
        assert command[0] == "pneumoscreen" and command[1] in main.commands, name
    for name in ("web", "worker", "worker-gpu"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_dockerfile_installs_dependencies_before_the_code_and_the_code_once():
    dockerfile = (REPO / "Dockerfile").read_text()
    dependencies = dockerfile.index("pip install -r requirements.txt")
    project = dockerfile.index("pip install --no-deps /src")
    # Only pyproject.toml is copied before the dependencies, and no source folder is copied at all.
    assert re.findall(r"^COPY (.+)$", dockerfile, re.M) == ["pyproject.toml ./"]
    assert dependencies < project and "--mount=type=bind,source=.,target=/src" in dockerfile
    assert "optional-dependencies" in dockerfile and '"$EXTRAS"' in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert not {name.rstrip("*") for name in packages["include"]} & set(ignored)


def test_flower_watches_the_same_broker_and_dicom_listener_runs_the_cli():
    flower = SERVICES["flower"]
    assert flower["command"][0] == "celery" and "flower" in flower["command"]
    broker = next(arg for arg in flower["command"] if arg.startswith("--broker="))
    assert broker.split("=", 1)[1] == SERVICES["web"]["environment"]["REDIS_URL"]
    assert flower["healthcheck"]["test"]
    dicom = SERVICES["dicom"]
    assert dicom["command"][:2] == ["pneumoscreen", "dicom-listen"] and dicom["command"][1] in main.commands
    assert "11112:11112" in dicom["ports"] and dicom["volumes"] == ["studies:/data"]
    assert dicom["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def _published(port: str) -> tuple[str, str]:
    """(host address, container port) of a compose port mapping; no address means every interface."""
    parts = str(port).split(":")
    return (parts[0] if len(parts) == 3 else "0.0.0.0"), parts[-1]


def test_flower_needs_a_password_and_listens_on_loopback_only():
    flower = SERVICES["flower"]
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    # Compose refuses to start without the variable: never a Flower without credentials, never a default password.
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth), auth
    assert not any(arg.startswith(("--basic-auth", "--basic_auth")) for arg in flower["command"])  # not in `ps`
    assert [_published(port) for port in flower["ports"]] == [("127.0.0.1", "5555")]
    assert flower["build"]["args"]["EXTRAS"] == "monitoring"
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["monitoring"]
    assert any(requirement.startswith("flower") for requirement in extra)
    for name, service in SERVICES.items():  # only the portal and the DICOM listener face the network
        for port in service.get("ports", []):
            assert _published(port)[0] == "127.0.0.1" or name in ("web", "dicom"), (name, port)


def test_flower_refuses_requests_without_the_password(tmp_path):
    """The environment variable compose sets really turns on Flower's basic auth (a real Flower on Redis)."""
    port = free_port()
    env = {**os.environ, "FLOWER_BASIC_AUTH": "ops:s3cret-pass"}
    process = subprocess.Popen([sys.executable, "-m", "celery", f"--broker={REDIS_URL}", "flower", f"--port={port}",
                                "--address=127.0.0.1"], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(base + "/healthcheck"), "Flower to start", timeout=60, every=0.3)
        for path in ("/", "/workers", "/api/workers", "/tasks"):
            assert requests.get(base + path, timeout=10).status_code == 401, path
            assert requests.get(base + path, auth=("ops", "wrong"), timeout=10).status_code == 401, path
        assert requests.get(base + "/", auth=("ops", "s3cret-pass"), timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
