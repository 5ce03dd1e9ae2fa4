"""A real 3-primary Redis Cluster on loopback ports, for tests (torn down afterwards)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import wait_until


@dataclass
class RedisCluster:
    """Three `redis-server --cluster-enabled yes` primaries joined by `redis-cli --cluster`."""

    ports: list[int]
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL the service takes: any one node, the scheme naming a cluster."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    @property
    def plain_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        assert server and cli, "redis-server and redis-cli are required"
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            cmd = [
                server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--appendonly", "no", "--save", "",
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            )
        for port in self.ports:
            wait_until(lambda p=port: self._cli(p, "PING") == "PONG", 10, f"node {port} up")
        create = [cli, "--cluster", "create"]
        create += [f"127.0.0.1:{p}" for p in self.ports]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        for port in self.ports:
            wait_until(
                lambda p=port: "cluster_state:ok" in self._cli(p, "CLUSTER", "INFO"),
                30,
                f"node {port} to report cluster_state:ok",
                poll_s=0.1,
            )

    def _cli(self, port: int, *args: str) -> str:
        cli = shutil.which("redis-cli") or "redis-cli"
        out = subprocess.run(
            [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()


@contextmanager
def redis_cluster(root: Path) -> Iterator[RedisCluster]:
    """A started cluster on three free loopback ports, stopped on exit."""
    from deploy import free_port

    ports: list[int] = []
    while len(ports) < 3:  # the cluster bus takes port + 10000: keep that below 65536
        port = free_port()
        if port < 55000 and port not in ports:
            ports.append(port)
    cluster = RedisCluster(ports, root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
