"""The Serve YAMLs and cluster.yaml: valid by Ray's own schemas, and consistent with each other."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from pydantic import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import (
    DeploymentSchema,
    HTTPOptionsSchema,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIGS = ["local.yaml", "gpu.yaml"]
DATA_ROOT = "/mnt/lumen-data"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def serve_config(name: str) -> dict[str, Any]:
    return load(ROOT / "configs" / name)


def cluster_config() -> dict[str, Any]:
    return load(ROOT / "cluster.yaml")


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    (app,) = config["applications"]
    found = [d for d in app["deployments"] if d["name"] == name]
    assert found, f"no deployment {name!r} in {[d['name'] for d in app['deployments']]}"
    return found[0]


def ray_cluster_schema() -> dict[str, Any]:
    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def validate_cluster(config: dict[str, Any]) -> None:
    """What `ray up` checks: the JSON schema, then Ray's own checks on the filled-out config."""
    jsonschema.validate(config, ray_cluster_schema())
    validate_config(prepare_config(copy.deepcopy(config)))


def ignored_keys(config: dict[str, Any]) -> list[str]:
    """Keys Serve's schema would silently drop (it ignores unknown fields): typos, old names."""

    def extra(where: str, given: dict[str, Any] | None, model: Any) -> list[str]:
        return [f"{where}.{key}" for key in (given or {}) if key not in model.model_fields]

    found = extra("", config, ServeDeploySchema)
    found += extra("http_options", config.get("http_options"), HTTPOptionsSchema)
    for app in config.get("applications", []):
        found += extra(app.get("name", "?"), app, ServeApplicationSchema)
        for dep in app.get("deployments", []):
            where = f"{app.get('name')}.{dep.get('name')}"
            found += extra(where, dep, DeploymentSchema)
            found += extra(
                f"{where}.ray_actor_options", dep.get("ray_actor_options"), RayActorOptionsSchema
            )
            found += extra(
                f"{where}.autoscaling_config", dep.get("autoscaling_config"), AutoscalingConfig
            )
    return found


def batching_problems(config: dict[str, Any]) -> list[str]:
    """Deployments whose max_ongoing_requests would silently cap their @serve.batch size."""
    problems = []
    for app in config["applications"]:
        for dep in app["deployments"]:
            batch = (dep.get("user_config") or {}).get("max_batch_size")
            ongoing = dep.get("max_ongoing_requests", 5)  # Serve's default
            if batch is not None and ongoing < batch:
                problems.append(f"{dep['name']}: max_ongoing_requests {ongoing} < {batch}")
    return problems


# ---- Serve YAMLs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_passes_serves_own_schema(name: str) -> None:
    schema = ServeDeploySchema.model_validate(serve_config(name))
    (app,) = schema.applications
    assert app.import_path == "serve_app:build_app"
    assert {d.name for d in app.deployments} == {"Ingress", "Embedder"}


def test_a_bad_serve_value_fails_serves_schema() -> None:
    broken = serve_config("gpu.yaml")
    deployment(broken, "Embedder")["ray_actor_options"]["num_gpus"] = -1
    with pytest.raises(ValidationError, match="num_gpus"):
        ServeDeploySchema.model_validate(broken)


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_has_no_keys_serve_would_silently_ignore(name: str) -> None:
    assert ignored_keys(serve_config(name)) == []


def test_misspelt_and_retired_serve_options_are_caught() -> None:
    # Serve's schema accepts these without a word; the deployment would run without a GPU.
    broken = serve_config("gpu.yaml")
    embedder = deployment(broken, "Embedder")
    embedder["ray_actor_options"]["num_gpu"] = embedder["ray_actor_options"].pop("num_gpus")
    embedder["max_concurrent_queries"] = embedder.pop("max_ongoing_requests")
    ServeDeploySchema.model_validate(broken)
    assert ignored_keys(broken) == [
        "lumen.Embedder.max_concurrent_queries",
        "lumen.Embedder.ray_actor_options.num_gpu",
    ]


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_embedder_takes_at_least_a_full_batch_of_requests(name: str) -> None:
    config = serve_config(name)
    assert deployment(config, "Embedder")["user_config"]["max_batch_size"] > 1
    assert batching_problems(config) == []


def test_a_request_cap_below_the_batch_size_is_reported() -> None:
    broken = serve_config("local.yaml")
    embedder = deployment(broken, "Embedder")
    embedder["max_ongoing_requests"] = embedder["user_config"]["max_batch_size"] - 1
    assert batching_problems(broken) == [
        f"Embedder: max_ongoing_requests {embedder['max_ongoing_requests']} "
        f"< {embedder['user_config']['max_batch_size']}"
    ]
    del embedder["max_ongoing_requests"]  # Serve's default of 5 caps it too
    assert batching_problems(broken)


def test_gpu_embedder_takes_one_gpu_and_autoscales() -> None:
    embedder = deployment(serve_config("gpu.yaml"), "Embedder")
    assert embedder["ray_actor_options"]["num_gpus"] == 1
    scaling = embedder["autoscaling_config"]
    assert "num_replicas" not in embedder or embedder["num_replicas"] == "auto"
    assert 0 <= scaling["min_replicas"] < scaling["max_replicas"]
    assert scaling["target_ongoing_requests"] <= embedder["max_ongoing_requests"]


def test_local_config_needs_no_gpu_and_listens_on_loopback() -> None:
    config = serve_config("local.yaml")
    assert config["http_options"]["host"] == "127.0.0.1"
    for name in ("Ingress", "Embedder"):
        assert not deployment(config, name)["ray_actor_options"].get("num_gpus")


# ---- cluster.yaml ----------------------------------------------------------------------


def test_cluster_yaml_passes_rays_cluster_schema() -> None:
    config = cluster_config()
    validate_cluster(config)
    assert config["provider"]["type"] == "aws"
    assert config["auth"]["ssh_user"] == "ubuntu"


@pytest.mark.parametrize(
    "breakage",
    ["fractional resource", "unknown key", "head type missing", "min above max"],
)
def test_broken_cluster_yaml_fails_validation(breakage: str) -> None:
    broken = cluster_config()
    head, gpu = broken["head_node_type"], "lumen.gpu"
    if breakage == "fractional resource":  # node resources must be whole numbers
        broken["available_node_types"][head]["resources"]["head"] = 0.01
    elif breakage == "unknown key":
        broken["available_node_types"][gpu]["max_worker"] = 3
    elif breakage == "head type missing":
        broken["head_node_type"] = "lumen.nope"
    else:
        broken["available_node_types"][gpu]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_cluster(broken)


def node_types_fitting(cluster: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """The node types whose declared resources hold one replica with these actor options."""
    wanted = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0)}
    wanted |= options.get("resources", {})
    return [
        name
        for name, node in cluster["available_node_types"].items()
        if all(node["resources"].get(k, 0) >= v for k, v in wanted.items() if v)
    ]


def test_gpu_deployments_land_on_the_intended_node_types() -> None:
    cluster, serve = cluster_config(), serve_config("gpu.yaml")
    head = cluster["head_node_type"]
    ingress = deployment(serve, "Ingress")["ray_actor_options"]
    embedder = deployment(serve, "Embedder")["ray_actor_options"]
    assert node_types_fitting(cluster, ingress) == [head]
    assert node_types_fitting(cluster, embedder) == ["lumen.gpu"]


def test_gpu_workers_can_hold_every_embedder_replica() -> None:
    cluster, serve = cluster_config(), serve_config("gpu.yaml")
    embedder = deployment(serve, "Embedder")
    gpu = cluster["available_node_types"]["lumen.gpu"]
    gpus_needed = (
        embedder["autoscaling_config"]["max_replicas"] * embedder["ray_actor_options"]["num_gpus"]
    )
    assert gpu["min_workers"] == 0, "GPU nodes should scale to zero with the Embedder"
    assert gpu["max_workers"] * gpu["resources"]["GPU"] >= gpus_needed
    assert cluster["max_workers"] >= gpu["max_workers"]


def test_cluster_image_runs_the_pinned_ray_and_python() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"ray\[", d)]
    (pin,) = pins
    version = pin.split("==")[1]
    assert version == ray.__version__
    docker = cluster_config()["docker"]
    for image in (docker["image"], docker["head_image"]):
        assert image.startswith(f"rayproject/ray:{version}-py311"), image


def test_every_node_mounts_the_shared_data_root_and_exports_lumen_env() -> None:
    config = cluster_config()
    mount = " ".join(config["initialization_commands"])
    assert "mount -t nfs4" in mount and DATA_ROOT in mount
    assert f"-v {DATA_ROOT}:{DATA_ROOT}" in config["docker"]["run_options"]
    assert "~/lumen.env" in config["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert start.index(". ~/lumen.env") < start.index("ray start"), key
    assert "--head" in " ".join(config["head_start_ray_commands"])
    assert "$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    assert any("pip install" in c and "lumen" in c for c in config["setup_commands"])


# ---- operator surfaces: no secrets in what the dashboard shows, dashboard on loopback -------

REDIS_PASSWORD = "hunter2-redis-password"
JWT = "j" * 48
GEMINI_KEY = "AIza-gemini-secret-key"


def _overrides() -> dict[str, Any]:
    return {
        "data_dir": "/tmp/lumen-data",
        "redis": {"url": f"redis://:{REDIS_PASSWORD}@10.0.0.5:6380/0", "namespace": "t1"},
        "auth": {"jwt_secret": JWT, "admin_users": ["root"]},
        "gemini": {"api_key": GEMINI_KEY, "base_url": "http://127.0.0.1:9", "timeout_s": 2},
    }


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_the_deployed_config_carries_no_secret(name: str) -> None:
    from deploy import load_config

    env: dict[str, str] = {}
    config = load_config(ROOT / "configs" / name, _overrides(), environ=env)
    shown = yaml.safe_dump(config)
    for secret in (REDIS_PASSWORD, JWT, GEMINI_KEY):
        assert secret not in shown
    assert env == {
        "LUMEN_REDIS__URL": f"redis://:{REDIS_PASSWORD}@10.0.0.5:6380/0",
        "LUMEN_AUTH__JWT_SECRET": JWT,
        "LUMEN_GEMINI__API_KEY": GEMINI_KEY,
    }


def test_non_secret_overrides_stay_in_the_app_arguments() -> None:
    from deploy import load_config

    overrides = _overrides()
    overrides["redis"]["url"] = "redis://127.0.0.1:6390/0"  # no password: not a secret
    env: dict[str, str] = {}
    config = load_config(ROOT / "configs" / "local.yaml", overrides, environ=env)
    settings = config["applications"][0]["args"]["settings"]
    assert settings["redis"] == {"url": "redis://127.0.0.1:6390/0", "namespace": "t1"}
    assert settings["auth"] == {"admin_users": ["root"]}
    assert settings["gemini"] == {"base_url": "http://127.0.0.1:9", "timeout_s": 2}
    assert settings["data_dir"] == "/tmp/lumen-data"
    assert set(env) == {"LUMEN_AUTH__JWT_SECRET", "LUMEN_GEMINI__API_KEY"}


def test_settings_from_the_environment_and_the_arguments_combine() -> None:
    from deploy import load_config
    from lumen.config import Settings

    env: dict[str, str] = {}
    config = load_config(ROOT / "configs" / "local.yaml", _overrides(), environ=env)
    args = config["applications"][0]["args"]["settings"]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        settings = Settings(**args)
    assert settings.redis.url.endswith("@10.0.0.5:6380/0") and settings.redis.namespace == "t1"
    assert settings.auth.jwt_secret == JWT and settings.auth.admin_users == ["root"]
    assert settings.gemini.api_key == GEMINI_KEY and settings.gemini.timeout_s == 2


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_the_serve_yamls_themselves_hold_no_secret_setting(name: str) -> None:
    text = (ROOT / "configs" / name).read_text()
    assert not re.search(r"jwt_secret|api_key|password|redis://", text, re.IGNORECASE)


def test_printed_redis_urls_hide_the_password() -> None:
    from deploy import redact_url

    assert redact_url(f"rediss://:{REDIS_PASSWORD}@cache:6379/0") == "rediss://:***@cache:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_embedded_redis_fsyncs_every_write_before_answering() -> None:
    from deploy import redis_command

    cmd = redis_command("redis-server", 6390, Path("/tmp/r"))
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "always"
    assert cmd[cmd.index("--bind") + 1] == "127.0.0.1"


def test_the_cluster_dashboard_listens_on_the_heads_loopback_only() -> None:
    config = cluster_config()
    start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    assert hosts == ["127.0.0.1"]
    every_command = json.dumps(config)
    assert "0.0.0.0" not in re.sub(r"--bind 0\.0\.0\.0", "", every_command)


def test_cluster_secrets_come_from_lumen_env_and_stay_private() -> None:
    config = cluster_config()
    assert any("chmod 600 ~/lumen.env" in c for c in config["setup_commands"])
    every_command = json.dumps(config)
    for word in ("jwt_secret", "api_key", "requirepass", "password", "redis://"):
        assert word not in every_command.lower()
