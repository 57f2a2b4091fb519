"""Fixtures shared by unit and integration tests.

Real services follow dramatiq's ``check_redis`` habit: on a developer machine a missing
Redis/PostgreSQL skips the test with a reason; in CI (``CI=true``) it fails.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from models.registry import ModelSpec
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema, make_session_factory
from tests.helpers.services import PrivateRedis

# Tests record what they injected and measured; the README reliability section is
# rendered from it (tests/benchmarks/reliability_report.py).
pytest_plugins = ("tests.helpers.reliability",)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_HOST, PG_PORT = "127.0.0.1", 5432


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run must start it")
    pytest.skip(f"{message} (start it, or run `bash .ci/run`)")


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """`mammo` tightens its process umask (producer/cli/main.py): run in-process, by
    CliRunner, it must not change the files of the tests that follow."""
    umask = os.umask(0o022)
    os.umask(umask)
    yield
    os.umask(umask)


@pytest.fixture(autouse=True)
def _memory_queue_emptied() -> Iterator[None]:
    """kombu's in-memory broker is one per process: messages a test sent and never consumed
    (a watcher or submit test without a worker) were taken by the next test's embedded
    worker as ids of its own database's images."""
    yield
    from kombu.transport import memory

    for queue in memory.Channel.queues.values():
        with queue.mutex:
            queue.queue.clear()


@pytest.fixture
def broker(settings: Settings, redis_url: str) -> Iterator[tuple[Settings, Celery]]:
    """The test's settings on its leased Redis database, and a Celery app sending there."""
    from shared.queue import create_celery_app

    wired = settings.model_copy(update={"broker_url": redis_url})
    app = create_celery_app(wired)
    yield wired, app
    app.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, real Keras model (random weights: for plumbing tests only, never shipped)."""
    from tests.helpers.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def tiny_model_spec(tiny_model_dir: Path) -> ModelSpec:
    from models.registry import resolve_model

    return resolve_model(str(tiny_model_dir))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mammo.db'}"


@pytest.fixture
def settings(sqlite_url: str, tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return Settings(database_url=sqlite_url, broker_url=None, model=str(tiny_model_dir),
                    chunk_size=4, report_dir=tmp_path / "reports", _env_file=None)  # type: ignore[call-arg]


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A private Redis database number per test, flushed before and after."""
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    # Several test runs may share this Redis (parallel sessions, a stray worker): lease a
    # database number in db 0 so no two live tests ever consume each other's messages.
    lease = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    token = uuid.uuid4().hex
    db = _lease_redis_db(lease, token)
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    client.flushdb()
    client.close()
    if lease.get(f"mammo-test-db:{db}") == token.encode():
        lease.delete(f"mammo-test-db:{db}")
    lease.close()


def _lease_redis_db(lease: object, token: str, *, ttl_s: int = 900) -> int:
    import redis

    assert isinstance(lease, redis.Redis)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for db in random.sample(range(1, 16), 15):
            if lease.set(f"mammo-test-db:{db}", token, nx=True, ex=ttl_s):
                return db
        time.sleep(0.5)
    pytest.fail("no free Redis database number (1-15) for this test after 120 s")


@pytest.fixture(params=["sqlite", "postgresql"])
def each_backend_sessions(request: pytest.FixtureRequest,
                          sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated SQLite file, then on a fresh PostgreSQL database."""
    url = sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database per test, dropped afterwards."""
    require_service("PostgreSQL", PG_HOST, PG_PORT)
    import psycopg

    name = f"mammo_test_{uuid.uuid4().hex[:12]}"
    admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own (no persistence), for faults the shared one must
    not suffer: paused, filled, made a replica, killed."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()  # SIGKILL ends a stopped (SIGSTOP) server too
