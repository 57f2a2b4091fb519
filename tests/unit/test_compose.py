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
