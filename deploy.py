"""The run command: Redis (found or started), a local Ray with its dashboard, the Serve app."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from lumen.config import RedisSettings, Settings

ROOT = Path(__file__).resolve().parent
APP_NAME = "lumen"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server with AOF persistence in `data_dir/redis`."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit(
            "redis-server is not installed and REDIS_URL does not answer.\n"
            "Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: "
            "`brew install redis`) or set REDIS_URL to a running Redis."
        )
    port = port or free_port()
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_answers(url):
            return proc, url
        if proc.poll() is not None:
            sys.exit(f"redis-server exited with {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    sys.exit("redis-server did not start within 10 s")


def load_config(path: Path, settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """The Serve YAML with our settings overrides put into the app's builder args."""
    config = yaml.safe_load(path.read_text())
    for app in config["applications"]:
        args = app.setdefault("args", {}) or {}
        merged = {**args.get("settings", {}), **settings_overrides}
        app["args"] = {**args, "settings": merged}
    return config


def deploy(config: dict[str, Any], timeout_s: float = 300.0) -> None:
    """Start Serve (in the Ray this process is connected to) and deploy the config."""
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        apps = serve.status().applications
        app = apps.get(schema.applications[0].name)
        if app is not None and app.status == "RUNNING":
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"Serve app failed to deploy: {app.message}")
        time.sleep(0.5)
    raise TimeoutError("Serve app did not reach RUNNING in time")


def start_ray(num_cpus: int | None = None, dashboard_port: int | None = None) -> None:
    import ray

    from actors.naming import NAMESPACE

    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        namespace=NAMESPACE,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Lumen locally (Ray + Redis + Serve).")
    parser.add_argument("--config", default=str(ROOT / "configs" / "local.yaml"))
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="connect to an existing Ray cluster instead of starting one",
    )
    opts = parser.parse_args()

    settings = Settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    redis_proc = None
    url = os.environ.get("REDIS_URL") or os.environ.get("LUMEN_REDIS__URL")
    if url and redis_answers(url):
        print(f"Using Redis at {url}")
    else:
        if url:
            print(f"Redis at {url} does not answer; starting a local one with AOF")
        redis_proc, url = start_redis(data_dir)
        print(f"Started redis-server ({url}), AOF in {data_dir / 'redis'}")
    settings = Settings(data_dir=data_dir, redis=RedisSettings(url=url)).with_local_secret()

    started_ray = opts.address is None
    if started_ray:
        start_ray()
    else:
        import ray

        from actors.naming import NAMESPACE

        ray.init(address=opts.address, namespace=NAMESPACE)
    overrides = {"data_dir": str(data_dir), "redis": {"url": url}}
    config = load_config(Path(opts.config), overrides)

    def stop(*_: object) -> None:
        print("\nStopping Lumen ...")
        try:
            from ray import serve

            serve.shutdown()
            import ray

            ray.shutdown()
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=10)
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    deploy(config)
    http = config.get("http_options", {})
    print(f"Lumen is running at http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}/")
    print("Ray dashboard: http://127.0.0.1:8265   (Ctrl-C stops everything started here)")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
