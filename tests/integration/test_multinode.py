"""Several nodes: removing a worker node mid-ingest loses nothing and shows as an event."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import RedisServer, service_settings
from tests.support.fake_gemini import FakeGemini
from tests.support.tiny_clip import TinyClip

ROOT = Path(__file__).resolve().parents[2]


def test_removing_a_worker_node_mid_ingest_loses_nothing(
    redis_server: RedisServer, tiny_clip: TinyClip, gemini: FakeGemini, tmp_path: Path
) -> None:
    overrides = service_settings(tmp_path / "data", redis_server.url, tiny_clip, gemini)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.multinode_scenario", json.dumps(overrides)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert proc.returncode == 0, result
    assert result["removed_node"] and result["done_at_removal"] < result["queued"]
    assert result["same_items"] and result["errors"] == {}
    assert result["index_size"] == result["unique_ids"] == result["vectors"] == result["queued"]
    assert {"node_dead", "worker_dead", "replica_dead"} & set(result["event_types"])
