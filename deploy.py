"""The run command: Redis (found or started), a local Ray with its dashboard, the Serve app.

Secrets never travel in the Serve config: the Ray dashboard shows every application's
`args` (and every `runtime_env`). `load_config` keeps only non-secret settings there and
exports the secret ones (`SECRET_SETTINGS`) as `LUMEN_*` variables into this process's
environment, which a Ray started afterwards by this process hands to every worker. On a
cluster each node's environment holds them already (`cluster.yaml` exports `lumen.env`
before `ray start`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from lumen.config import RedisSettings, Settings

ROOT = Path(__file__).resolve().parent
APP_NAME = "lumen"
# Settings that are secrets, as paths into the nested settings; the Redis URL only when it
# carries a password.
SECRET_SETTINGS = (("redis", "url"), ("auth", "jwt_secret"), ("gemini", "api_key"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str, cluster: bool = False) -> bool:
    """Whether the Redis (or Redis Cluster: `redis+cluster://` or `cluster`) answers PING."""
    from lumen.storage import REDIS_ERRORS, connect

    try:
        client = connect(url, cluster, socket_connect_timeout=1, retry=None, retry_on_error=[])
        return bool(client.ping())
    except (*REDIS_ERRORS, ValueError):
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
    cmd = redis_command(binary, port, rdir)
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


def redis_command(binary: str, port: int, data_dir: Path) -> list[str]:
    """redis-server on loopback with an AOF fsynced before every reply (`appendfsync always`).

    An upload is acknowledged only after Redis has answered, so with `always` an answered
    upload survives a crash of Redis or of the machine; `everysec` could lose the last second.
    """
    return [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip


def is_secret(path: tuple[str, ...], value: Any) -> bool:
    """Whether the setting at `path` with this value must stay out of the Serve config."""
    if path not in SECRET_SETTINGS or value in (None, ""):
        return False
    if path == ("redis", "url"):
        return urlsplit(str(value)).password is not None
    return True


def split_secrets(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(`overrides` without secrets, the secrets as `LUMEN_*` environment variables)."""
    public: dict[str, Any] = {}
    env: dict[str, str] = {}

    def walk(given: dict[str, Any], out: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in given.items():
            path = (*prefix, key)
            if isinstance(value, dict):
                out[key] = {}
                walk(value, out[key], path)
                if not out[key]:
                    del out[key]
            elif is_secret(path, value):
                env["LUMEN_" + "__".join(p.upper() for p in path)] = str(value)
            else:
                out[key] = value

    walk(overrides, public, ())
    return public, env


def load_config(
    path: Path,
    settings_overrides: dict[str, Any],
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Serve YAML with the non-secret settings overrides in the app's builder args.

    Secret overrides are exported into `environ` (this process's environment by default)
    instead: start Ray after this call, so that its workers inherit them.
    """
    public, secrets_env = split_secrets(settings_overrides)
    target = os.environ if environ is None else environ
    target.update(secrets_env)
    ray = sys.modules.get("ray")
    if secrets_env and ray is not None and ray.is_initialized() and environ is None:
        print(
            f"Note: {', '.join(sorted(secrets_env))} stay out of the Serve config; a Ray that "
            "is already running sees them only if its nodes' environment has them.",
            file=sys.stderr,
        )
    config = yaml.safe_load(path.read_text())
    for app in config["applications"]:
        args = app.setdefault("args", {}) or {}
        public_args, _ = split_secrets(args.get("settings", {}))
        merged = {**public_args, **public}
        app["args"] = {**args, "settings": merged}
    return config


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


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
    if url and redis_answers(url, settings.redis.cluster):
        print(f"Using Redis at {redact_url(url)}")
    else:
        if url:
            print(f"Redis at {redact_url(url)} does not answer; starting a local one with AOF")
        redis_proc, url = start_redis(data_dir)
        print(f"Started redis-server ({url}), AOF in {data_dir / 'redis'}")
    redis_settings = RedisSettings(url=url, cluster=settings.redis.cluster)
    settings = Settings(data_dir=data_dir, redis=redis_settings).with_local_secret()

    # Before Ray starts: a secret Redis URL is exported here, for the workers to inherit.
    overrides = {"data_dir": str(data_dir), "redis": {"url": url}}
    config = load_config(Path(opts.config), overrides)
    started_ray = opts.address is None
    if started_ray:
        start_ray()
    else:
        import ray

        from actors.naming import NAMESPACE

        ray.init(address=opts.address, namespace=NAMESPACE)
        if split_secrets(overrides)[1]:
            print(
                "Note: the Redis URL carries a password, so it is not passed to the app; each "
                "node's LUMEN_REDIS__URL must hold it (cluster.yaml exports lumen.env)."
            )

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
