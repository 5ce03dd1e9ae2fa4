"""Session fixtures: a private redis-server, one local Ray + Serve app, a tiny trained model."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_gemini import FakeGemini, fake_gemini
from tests.support.http import wait_healthy
from tests.support.tiny_clip import TinyClip, ensure_tiny_clip
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RedisServer:
    """A redis-server this test session owns, with AOF, that tests may restart."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        binary = shutil.which("redis-server")
        assert binary, "redis-server is required (scripts/ensure-redis.sh installs it)"
        cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 10, f"redis-server on port {self.port} to answer PING")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def crash_and_restart(self) -> None:
        """SIGKILL (no shutdown, no final fsync), then start again from the AOF."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    from deploy import free_port

    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_clip() -> TinyClip:
    return ensure_tiny_clip()


@dataclass
class Service:
    """The running app: its base URL, settings overrides and the Redis behind it."""

    url: str
    settings: Any
    redis: RedisServer
    config: dict[str, Any]

    def client(self, **kw: Any) -> httpx.Client:
        """An HTTP client with an address of its own (the service trusts 127.0.0.1 as a
        proxy), so per-address throttles never mix up unrelated tests."""
        headers = {"X-Forwarded-For": random_address(), **kw.pop("headers", {})}
        kw.setdefault("timeout", 60)
        return httpx.Client(base_url=self.url, headers=headers, **kw)

    def new_user(self, prefix: str = "u") -> tuple[str, dict[str, str]]:
        """Sign up and log in a fresh user; returns (name, auth headers)."""
        name = f"{prefix}{uuid.uuid4().hex[:10]}"
        with self.client() as c:
            r = c.post("/signup", json={"username": name, "password": "correct horse"})
            assert r.status_code == 200, r.text
            r = c.post("/login", data={"username": name, "password": "correct horse"})
            assert r.status_code == 200, r.text
            return name, {"Authorization": f"Bearer {r.json()['access_token']}"}


ADMIN = "operator"


def random_address() -> str:
    """A random private (10/8) address: one per test client."""
    n = secrets.randbelow(2**24)
    return f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"


@pytest.fixture(scope="session")
def gemini() -> Iterator[FakeGemini]:
    """A local fake Gemini endpoint the service's real google-genai client talks to."""
    with fake_gemini() as fake:
        fake.respond_with("The answer, from the fake Gemini.")
        yield fake


def service_settings(
    data_dir: Path, redis_url: str, clip: TinyClip, gemini: FakeGemini
) -> dict[str, Any]:
    model = clip.model_settings().model_dump()
    return {
        "data_dir": str(data_dir),
        "redis": {"url": redis_url, "namespace": f"t{uuid.uuid4().hex[:6]}"},
        "model": model,
        "queue": {"task_timeout_s": 15.0, "max_retries": 3},
        "auth": {"admin_users": [ADMIN], "trusted_proxies": ["127.0.0.1"]},
        "gemini": {"api_key": secrets.token_hex(16), "base_url": gemini.base_url, "timeout_s": 2},
        "admission": {"stream_recheck_s": 1.0, "refusal_delay_s": 0.1},
        "monitor": {"poll_interval_s": 1.0, "sse_interval_s": 0.25, "heartbeat_interval_s": 1.0},
    }


@pytest.fixture(scope="session")
def service(
    redis_server: RedisServer,
    tiny_clip: TinyClip,
    gemini: FakeGemini,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    import ray
    from ray import serve

    from deploy import deploy, free_port, load_config, start_ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    data_dir = tmp_path_factory.mktemp("data")
    overrides = service_settings(data_dir, redis_server.url, tiny_clip, gemini)
    config = load_config(ROOT / "configs" / "local.yaml", overrides)
    port = free_port()
    config["http_options"]["port"] = port
    start_ray(num_cpus=4, dashboard_port=free_port())
    deploy(config)
    from lumen.config import Settings

    settings = Settings(**overrides)
    svc = Service(f"http://127.0.0.1:{port}", settings, redis_server, config)
    wait_healthy(svc.url)
    yield svc
    serve.shutdown()
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `restarts` run after all others: they restart Redis, the app and Ray."""
    items.sort(key=lambda item: item.get_closest_marker("restarts") is not None)


def admin_headers(service: Service) -> dict[str, str]:
    """Bearer headers of the operator account (`ADMIN`, an admin user in the test settings)."""
    with service.client() as c:
        c.post("/signup", json={"username": ADMIN, "password": "operator password"})
        r = c.post("/login", data={"username": ADMIN, "password": "operator password"})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}
