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
import contextlib
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

from lumen.config import ModelSettings, RedisSettings, Settings

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


def app_model_settings(config: dict[str, Any]) -> ModelSettings:
    """The model the app's Embedder will load: `LUMEN_*` settings with the YAML's args on top."""
    args = (config.get("applications") or [{}])[0].get("args") or {}
    return Settings(**(args.get("settings") or {})).model


def check_app_model(config: dict[str, Any]) -> None:
    """Exit with a message naming what to set when no Embedder replica could load the model.

    Run before anything starts: a replica that cannot load its model would otherwise be
    restarted by Serve for minutes (retrying a hub download, say) before the deploy fails.
    """
    from lumen.models import check_model

    model = app_model_settings(config)
    started = time.monotonic()
    problem = check_model(model)
    if problem is not None:
        sys.exit(f"The Embedder cannot load its model: {problem}")
    print(f"Model {model.name} checked ({time.monotonic() - started:.1f} s)")


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
    parser.add_argument(
        "--skip-model-check",
        action="store_true",
        help="deploy without first checking that the model loads here (the weights exist only "
        "on the GPU nodes)",
    )
    parser.add_argument(
        "--deploy-timeout-s",
        type=float,
        default=300.0,
        help="give up when the app is not running after this long (default 300)",
    )
    parser.add_argument(
        "--dashboard-port", type=int, default=None, help="the Ray dashboard's port (default 8265)"
    )
    opts = parser.parse_args()
    config_path = Path(opts.config)
    if not config_path.is_file():
        sys.exit(f"Serve config not found: {config_path}")
    if not opts.skip_model_check:
        check_app_model(yaml.safe_load(config_path.read_text()))

    run = Run()
    signal.signal(signal.SIGINT, run.stop_on_signal)
    signal.signal(signal.SIGTERM, run.stop_on_signal)
    try:
        run.start(config_path, opts.address, opts.deploy_timeout_s, opts.dashboard_port)
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            print(f"Deploy failed: {exc}", file=sys.stderr)
        print("Stopping what this run started ...", file=sys.stderr)
        run.stop()
        raise SystemExit(exc.code if isinstance(exc, SystemExit) else 1) from None
    http = run.config.get("http_options", {})
    print(f"Lumen is running at http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}/")
    dashboard = f"http://127.0.0.1:{opts.dashboard_port or 8265}"
    print(f"Ray dashboard: {dashboard}   (Ctrl-C stops everything started here)")
    while True:
        time.sleep(3600)


class Run:
    """What one run command started (Redis, Ray, Serve), so that it can stop exactly that."""

    def __init__(self) -> None:
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.connected = False
        self.config: dict[str, Any] = {}

    def start(
        self,
        config_path: Path,
        address: str | None,
        timeout_s: float,
        dashboard_port: int | None = None,
    ) -> None:
        settings = Settings()
        data_dir = settings.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        url = os.environ.get("REDIS_URL") or os.environ.get("LUMEN_REDIS__URL")
        if url and redis_answers(url, settings.redis.cluster):
            print(f"Using Redis at {redact_url(url)}")
        else:
            if url:
                print(f"Redis at {redact_url(url)} does not answer; starting a local one with AOF")
            self.redis_proc, url = start_redis(data_dir)
            print(f"Started redis-server ({url}), AOF in {data_dir / 'redis'}")
        redis_settings = RedisSettings(url=url, cluster=settings.redis.cluster)
        Settings(data_dir=data_dir, redis=redis_settings).with_local_secret()

        # Before Ray starts: a secret Redis URL is exported here, for the workers to inherit.
        overrides = {"data_dir": str(data_dir), "redis": {"url": url}}
        self.config = load_config(config_path, overrides)
        if address is None:
            start_ray(dashboard_port=dashboard_port)
        else:
            import ray

            from actors.naming import NAMESPACE

            ray.init(address=address, namespace=NAMESPACE)
            if split_secrets(overrides)[1]:
                print(
                    "Note: the Redis URL carries a password, so it is not passed to the app; "
                    "each node's LUMEN_REDIS__URL must hold it (cluster.yaml exports lumen.env)."
                )
        self.connected = True
        deploy(self.config, timeout_s)

    def stop(self) -> None:
        """Serve, this process's Ray connection (a Ray it started ends with it), its Redis."""
        try:
            if self.connected:
                self.connected = False
                import ray
                from ray import serve

                with contextlib.suppress(Exception):
                    serve.shutdown()
                ray.shutdown()
        finally:
            if self.redis_proc is not None:
                self.redis_proc.terminate()
                try:
                    self.redis_proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.redis_proc.kill()
                    self.redis_proc.wait(timeout=10)
                self.redis_proc = None

    def stop_on_signal(self, *_: object) -> None:
        print("\nStopping Lumen ...")
        self.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
