"""docker-compose.yml only uses real `mammo` commands and real MAMMO_* settings."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from producer.cli.main import cli
from shared.config import Settings

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
    assert _env("watcher")["MAMMO_PATIENT_ID_KEY"] == "${MAMMO_PATIENT_ID_KEY:-}"


def test_flower_is_local_authenticated_and_optional() -> None:
    flower = _services()["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["profiles"] == ["monitoring"]
    command = " ".join(str(w) for w in flower["command"])  # type: ignore[attr-defined]
    assert '--basic-auth="$${FLOWER_BASIC_AUTH:?' in command
    assert '--broker="$$MAMMO_BROKER_URL"' in command and "redis://" not in command
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
    assert "inspect ping" in worker_test and '--destination="celery@$$HOSTNAME"' in worker_test
    assert services["worker-gpu"]["healthcheck"] == services["worker"]["healthcheck"]
    watcher_test = services["watcher"]["healthcheck"]["test"][1]  # type: ignore[index]
    # Its exit code is the check (7: database, 8: broker unreachable), not a grep of it.
    assert watcher_test == "mammo status --health --format json > /dev/null"
    status = cli.get_command(click.Context(cli), "status")
    assert status is not None
    status.make_context("status", ["--health", "--format", "json"])  # the options exist
