"""docker-compose.yml only uses real `mammo` commands and real MAMMO_* settings."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from producer.cli.main import cli
from shared.config import Settings, load_settings
from shared.queue import create_celery_app

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
yaml = pytest.importorskip("yaml", reason="PyYAML parses docker-compose.yml")


def _services() -> dict[str, dict[str, object]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_expected_services_exist() -> None:
    assert {"redis", "postgres", "worker", "worker-gpu", "flower", "watcher"} <= set(_services())


def test_redis_persists_and_never_evicts() -> None:
    command = " ".join(_services()["redis"]["command"])  # type: ignore[arg-type]
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command


def test_every_mammo_command_resolves() -> None:
    checked = 0
    for name, service in _services().items():
        command = service.get("command")
        if not isinstance(command, list) or command[0] != "mammo":
            continue
        current: click.Command = cli
        args = [str(w) for w in command[1:]]
        while isinstance(current, click.Group):
            assert args, f"service {name}: `{' '.join(command)}` names no subcommand"
            sub = current.get_command(click.Context(current), args[0])
            assert sub is not None, f"service {name}: `mammo {args[0]}` is not a command"
            current, args = sub, args[1:]
        current.make_context(current.name or "mammo", args)  # raises on unknown options
        checked += 1
    assert checked >= 3


def test_every_environment_variable_is_a_setting() -> None:
    fields = {f"MAMMO_{name.upper()}" for name in Settings.model_fields}
    for name, service in _services().items():
        env = service.get("environment") or {}
        assert isinstance(env, dict)
        for key in env:
            if key.startswith("MAMMO_"):
                assert key in fields, f"service {name}: {key} is not a setting"


def _env(name: str) -> dict[str, object]:
    env = _services()[name].get("environment") or {}
    assert isinstance(env, dict)
    return env


MAMMO_SERVICES = ("worker", "worker-gpu", "watcher")


def test_no_secret_has_a_default() -> None:
    required = "${POSTGRES_PASSWORD:?"
    assert str(_env("postgres")["POSTGRES_PASSWORD"]).startswith(required)
    urls = [(name, str(service["environment"]["MAMMO_DATABASE_URL"]))  # type: ignore[index]
            for name, service in _services().items()
            if "MAMMO_DATABASE_URL" in (service.get("environment") or {})]
    assert len(urls) >= 4
    for name, url in urls:
        assert f"mammo:{required}" in url, f"service {name}: the database password has a default"
    text = COMPOSE.read_text()
    assert ":mammo@" not in text and "POSTGRES_PASSWORD: mammo" not in text
    for service in MAMMO_SERVICES:
        for name in ("MAMMO_SMTP_PASSWORD", "MAMMO_WEBHOOK_SECRET", "MAMMO_PATIENT_ID_KEY"):
            if name in _env(service):
                assert _env(service)[name] == f"${{{name}:-}}", f"service {service}: {name}"



def test_every_mammo_service_can_pseudonymise_patient_ids() -> None:
    # `docker compose run worker mammo submit ...` registers files too: without the key
    # it refused every DICOM that carries a PatientID.
    for name in (*MAMMO_SERVICES, "migrate"):
        assert _env(name)["MAMMO_PATIENT_ID_KEY"] == "${MAMMO_PATIENT_ID_KEY:-}", name


def test_header_names_a_submit_path_that_reaches_the_backends() -> None:
    services = _services()
    header = COMPOSE.read_text().split("x-mammo-env:")[0]
    assert "docker compose exec watcher mammo submit /data/" in header
    # A bare host-side `mammo submit` would need published ports; none are.
    for backend in ("redis", "postgres"):
        assert "ports" not in services[backend], backend
    assert services["watcher"]["command"][0] == "mammo"  # type: ignore[index]
    assert "/data:/data" in services["watcher"]["volumes"]  # type: ignore[operator]


def test_flower_is_local_authenticated_and_optional() -> None:
    flower = _services()["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["profiles"] == ["monitoring"]
    command = " ".join(str(w) for w in flower["command"])  # type: ignore[attr-defined]
    assert '--basic-auth="$${FLOWER_BASIC_AUTH:?' in command
    # mammo's app (its transport options), not a bare --broker (see worker/celery_app.py).
    assert "exec celery -A worker.celery_app flower" in command
    assert "--broker" not in command and "redis://" not in command
    assert _env("flower")["MAMMO_BROKER_URL"] == _env("worker")["MAMMO_BROKER_URL"]


def test_everything_restarts_and_waits_for_healthy_backends() -> None:
    services = _services()
    for name in ("redis", "postgres", *MAMMO_SERVICES, "flower"):
        assert services[name].get("restart") == "unless-stopped", name
    for name in ("redis", "postgres"):
        assert services[name].get("healthcheck"), name
    for name in MAMMO_SERVICES:
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict)
        for backend in ("redis", "postgres"):
            assert depends[backend] == {"condition": "service_healthy"}, f"{name} -> {backend}"
        assert depends["migrate"] == {"condition": "service_completed_successfully"}


def test_every_long_running_service_rotates_its_logs() -> None:
    # Docker's json-file driver keeps a container's stdout for ever unless capped: the soak
    # probe measured about 650 bytes per image from a worker and a watcher.
    for name, service in _services().items():
        if service.get("restart") != "unless-stopped":
            continue
        logging = service.get("logging")
        assert isinstance(logging, dict), name
        options = logging.get("options")
        assert isinstance(options, dict), name
        assert options.get("max-size") and options.get("max-file"), name


def test_reports_go_to_a_writable_volume() -> None:
    services = _services()
    assert "reports" in yaml.safe_load(COMPOSE.read_text())["volumes"]
    for name in MAMMO_SERVICES:
        report_dir = _env(name)["MAMMO_REPORT_DIR"]
        assert f"reports:{report_dir}" in services[name]["volumes"], name  # type: ignore[operator]
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    assert f"-o mammo -g mammo /var/lib/mammo {report_dir}" in dockerfile
    assert dockerfile.index(str(report_dir)) < dockerfile.index("USER mammo")


def test_notification_settings_and_exam_timeout_reach_every_mammo_service() -> None:
    for name in MAMMO_SERVICES:
        env = _env(name)
        assert env["MAMMO_SMTP_CA_FILE"] == "${MAMMO_SMTP_CA_FILE:-}", name
        assert env["MAMMO_EXAM_TIMEOUT_S"] == "${MAMMO_EXAM_TIMEOUT_S:-1800}", name
        for key in ("HOST", "PORT", "SECURITY", "USER", "PASSWORD", "FROM", "TO"):
            assert f"MAMMO_SMTP_{key}" in env, f"service {name}: MAMMO_SMTP_{key}"
        assert {"MAMMO_WEBHOOK_URL", "MAMMO_WEBHOOK_SECRET", "MAMMO_ALERT_SUSPICION"} <= set(env)


def test_empty_pass_through_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _env("worker").items():
        if str(value).endswith(":-}"):  # what compose passes when the host leaves it unset
            monkeypatch.setenv(name, "")
    settings = Settings()
    assert settings.smtp_ca_file is None and settings.smtp_host is None
    assert settings.webhook_url is None


def test_mammo_services_have_healthchecks() -> None:
    services = _services()
    for name in MAMMO_SERVICES:
        test = services[name]["healthcheck"]["test"]  # type: ignore[index]
        assert test[0] == "CMD-SHELL", name
    worker_test = services["worker"]["healthcheck"]["test"][1]  # type: ignore[index]
    assert worker_test.startswith("celery -A worker.celery_app inspect ping ")
    assert '--destination="celery@$$HOSTNAME"' in worker_test and "--broker" not in worker_test
    assert services["worker-gpu"]["healthcheck"] == services["worker"]["healthcheck"]
    watcher_test = services["watcher"]["healthcheck"]["test"][1]  # type: ignore[index]
    # Its exit code is the check (7: database, 8: broker unreachable), not a grep of it.
    assert watcher_test == "mammo status --health --format json > /dev/null"
    status = cli.get_command(click.Context(cli), "status")
    assert status is not None
    status.make_context("status", ["--health", "--format", "json"])  # the options exist


def test_celery_command_line_app_is_the_workers_app(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """`celery -A worker.celery_app` (healthcheck, Flower) gets the options `mammo worker`
    uses; the Redis key separator above all, or the worker cannot reply to it."""
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("MAMMO_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.delitem(sys.modules, "worker.celery_app", raising=False)
    cli_app = importlib.import_module("worker.celery_app").app
    expected = create_celery_app(load_settings())
    assert cli_app.conf.broker_url == "redis://redis:6379/0"
    assert cli_app.conf.broker_transport_options == expected.conf.broker_transport_options
    assert cli_app.conf.broker_transport_options["sep"] == ":"
    assert cli_app.main == expected.main


def test_celery_command_line_app_never_imports_tensorflow(tmp_path: Path) -> None:
    """A healthcheck every minute must not load TensorFlow (seconds, and GPU memory)."""
    probe = ("import sys, worker.celery_app; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('tensorflow', 'keras', 'reportlab', 'matplotlib')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_")}
    env["MAMMO_BROKER_URL"] = "redis://redis:6379/0"
    env["PYTHONPATH"] = str(COMPOSE.parent)
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_workers_stop_grace_outlasts_the_chunk_time_limit() -> None:
    services = _services()
    limit = Settings.model_fields["task_time_limit_s"].default
    for name in ("worker", "worker-gpu"):
        env = _env(name)
        limit = int(str(env.get("MAMMO_TASK_TIME_LIMIT_S", limit)))
        grace = _seconds(str(services[name]["stop_grace_period"]))
        assert grace >= limit + 60, f"service {name}: {grace} s grace, {limit} s chunk limit"


def _seconds(duration: str) -> int:
    """A compose duration such as '16m' or '90s' (or '1m30s') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matches the whole path from the context root ('*' within
    one folder, '**/' any folders), one that matches a folder excludes all under it, the
    last matching pattern wins and '!' re-includes."""
    ignored = False
    prefixes = [path.rsplit("/", n)[0] for n in range(path.count("/"), -1, -1)]
    for pattern in patterns:
        glob = pattern.removeprefix("!").rstrip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not pattern.startswith("!")
    return ignored


def test_build_context_leaves_out_secrets_but_not_what_the_image_installs() -> None:
    root = COMPOSE.parent
    patterns = [line.strip() for line in (root / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for secret in (".env", ".env.local", ".git/config", "mammo.db", ".venv/bin/python",
                   "mammo_pipeline.egg-info/PKG-INFO", "build/lib/worker/tasks.py",
                   "worker/__pycache__/tasks.cpython-311.pyc", "reports/batch-1.pdf"):
        assert _docker_ignored(secret, patterns), secret
    assert not _docker_ignored(".env.example", patterns)
    copied = re.findall(r"^COPY (.+) \S+$", (root / "Dockerfile").read_text(), re.MULTILINE)
    sources = [source for line in copied for source in line.split()]
    assert {"pyproject.toml", "README.md", "producer", "worker", "shared", "models"} <= set(sources)
    tracked = subprocess.run(["git", "ls-files", "--", *sources], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
    assert any(path.startswith("models/") for path in tracked)
    assert [path for path in tracked if _docker_ignored(path, patterns)] == []
