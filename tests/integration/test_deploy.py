"""The run command (deploy.py) as a user runs it: a deploy that cannot succeed fails soon,
says what to set, and leaves no process behind (its private redis-server, its Ray).

Every process the run command starts inherits a marker in its environment; after it exits,
no process on the machine may carry that marker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from deploy import free_port
from tests.support.tiny_clip import TinyClip
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
MARK = "LUMEN_TEST_RUN_MARK"
# Bounds the subprocess, so a hung deploy fails the test instead of hanging it.
RUN_LIMIT_S = 240


def marked_processes(mark: str) -> list[psutil.Process]:
    """Every live process whose environment carries `MARK=mark`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK) == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def run_command_env(tmp_path: Path, tiny: TinyClip, mark: str, **model: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LUMEN_", "RAY_")) and k != "REDIS_URL"
    }
    env.update(
        {
            MARK: mark,
            "LUMEN_DATA_DIR": str(tmp_path / "data"),
            "LUMEN_MODEL__NAME": tiny.name,
            "LUMEN_MODEL__CONFIG_FILE": str(tiny.config_file),
            "LUMEN_MODEL__CHECKPOINT": str(tiny.checkpoint),
            "LUMEN_MODEL__PRETRAINED": "",
            "LUMEN_MODEL__FP16_ON_GPU": "false",
            **{f"LUMEN_MODEL__{k.upper()}": v for k, v in model.items()},
        }
    )
    return env


def serve_config(tmp_path: Path, **app: Any) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    config["http_options"]["port"] = free_port()
    config["applications"][0].update(app)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_deploy(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "deploy.py"), "--config", str(config)]
    cmd += ["--dashboard-port", str(free_port()), "--deploy-timeout-s", "120"]
    return subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=RUN_LIMIT_S
    )


def assert_nothing_left(mark: str) -> None:
    wait_until(lambda: not marked_processes(mark), 30, "every process the run started to end")


def test_the_process_marker_finds_a_marked_child(tmp_path: Path) -> None:
    """The check below can fail: a live marked process is found."""
    mark = uuid.uuid4().hex
    child = subprocess.Popen(["sleep", "60"], env={**os.environ, MARK: mark})
    try:
        assert [p.pid for p in marked_processes(mark)] == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert marked_processes(mark) == []


def test_an_unloadable_checkpoint_fails_the_deploy_at_once_naming_the_setting(
    tmp_path: Path, tiny_clip: TinyClip
) -> None:
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(os.urandom(4096))
    mark = uuid.uuid4().hex
    env = run_command_env(tmp_path, tiny_clip, mark, checkpoint=str(garbage))
    done = run_deploy(serve_config(tmp_path), env)
    assert done.returncode != 0, done.stdout
    assert "The Embedder cannot load its model" in done.stderr
    assert "LUMEN_MODEL__CHECKPOINT" in done.stderr and str(garbage) in done.stderr
    assert_nothing_left(mark)


def test_an_unknown_model_name_is_refused(tmp_path: Path, tiny_clip: TinyClip) -> None:
    mark = uuid.uuid4().hex
    env = run_command_env(tmp_path, tiny_clip, mark, name="ViT-Nope", config_file="")
    done = run_deploy(serve_config(tmp_path), env)
    assert done.returncode != 0
    assert "unknown model name 'ViT-Nope'" in done.stderr
    assert_nothing_left(mark)


@pytest.mark.restarts
def test_a_deploy_that_fails_after_starting_stops_its_redis_and_ray(
    tmp_path: Path, tiny_clip: TinyClip
) -> None:
    mark = uuid.uuid4().hex
    env = run_command_env(tmp_path, tiny_clip, mark)
    config = serve_config(tmp_path, import_path="serve_app:no_such_builder")
    done = run_deploy(config, env)
    assert done.returncode != 0, done.stdout
    assert "Started redis-server" in done.stdout  # it did start things ...
    assert "Deploy failed" in done.stderr and "no_such_builder" in done.stderr
    assert "Stopping what this run started" in done.stderr
    assert_nothing_left(mark)  # ... and stopped all of them
