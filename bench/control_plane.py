"""Control plane (issue 14): what the service costs around the model, with no model at all.

The real path (Ingress -> Redis -> Dispatcher -> Serve -> Embedder -> IndexShard) runs with
the benchmark-only null model (`model.benchmark_null`, lumen/nullmodel.py: no decode, no
forward, deterministic vectors), so everything measured is the control plane. It is refused
unless `LUMEN_BENCHMARK_NULL_MODEL=i-am-benchmarking` is in the environment; this script sets
it before Ray starts, so every worker inherits it. configs/local.yaml is deployed as shipped
(1..2 Embedder replicas of 1 CPU, batches of 32).

    1. items/s committed, two ways over `--items` items of `--users` users:
       [1] upload -> done: every user (its own client address) uploads at once a ZIP of
           distinct 16x16 JPEGs over HTTP (ZIPs are queued in chunks while they extract,
           so embedding overlaps the upload); wall time runs from the first request to the
           last commit.
       [2] queued backlog -> done: as many items queued straight into Redis with the
           store's own `enqueue` (what the ingress does after it stored the files), then
           one `Dispatcher.wake`: the dispatch path alone, Redis -> Dispatcher -> Serve ->
           IndexShard, with a backlog.
       The rate is read from the done zsets' commit times (their scores), between the 5th
       and 95th percentile of the phase's commits (steady state). Target on this box:
       >= 5,000 items/s.
    2. CPU-us per item of every process (ingress, embedders, dispatcher, index shards,
       monitor, Serve proxy and controller, redis-server, Ray's own processes, this driver):
       psutil CPU times at the phase's start and after its last commit, over its items.
    3. Idle CPU: with nothing queued, the same processes over `--idle-s` seconds; the
       control plane (dispatcher + index shards + monitor + ingress) as % of one core.
       Target: <= 2%. An empty Ray actor started for the purpose is sampled alongside:
       the floor any actor costs (Ray's own threads), whatever our code does.

Because the box is shared, the run also prints CPU-bound ceilings: the items/s the measured
CPU per item allows if each service process had a core (the first role to saturate), and if
all processes shared every core. `--py-spy DIR` records raw py-spy stacks (GIL-holding
samples only) of the ingress, dispatcher, embedders and index shards during each phase.
A warm-up user (64 items) goes through first and is not counted. Nothing here asserts a
timing: the verdicts are printed, and the exit status is 0 unless the run itself failed.

    python bench/control_plane.py               # 20,000 items, 20 s idle
    python bench/control_plane.py --quick       # 4,000 items, 10 s idle (`make bench`)
    python bench/control_plane.py --items 4200 --compare 1,21 --rounds 2
        # fairness: the queued-backlog phase alone with 1 user, then the same items split
        # over 21 users (alternating, `--rounds` times each), and the 21-user rate as a
        # ratio of the 1-user rate measured in the same run (target >= 0.8)
    python bench/control_plane.py --items 4200 --batch 32,256 [--compare 1,21]
        # the same at each Embedder batch size in turn: the Embedder's `user_config`
        # `max_batch_size` is redeployed (reconfigured, not restarted; max_ongoing_requests
        # raised to at least it), and the dispatcher sizes its chunks from it. 256 is what a
        # GPU replica runs, so it is the figure for the 5,000 target. Images per forward
        # pass come from the passes the replicas count (their heartbeats).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psutil
import ray
from common import (
    Service,
    actor_pids,
    bench_address,
    print_machine,
    random_jpeg_zip,
    running_service,
    set_deployment,
    table,
)

from lumen.nullmodel import BENCHMARK_ENV, BENCHMARK_ENV_VALUE
from lumen.storage import Stores

TARGET_ITEMS_PER_S = 5_000.0
TARGET_IDLE_CORE_PCT = 2.0
TARGET_FAIR_RATIO = 0.8
WARMUP_ITEMS = 64
CONTROL_PLANE = ("dispatcher", "index shard", "monitor", "ingress")
REFERENCE = "reference: an empty Ray actor"


# --------------------------------------------------------------------------- inputs


def jpeg_zip(name: str, count: int, seed: int) -> Path:
    """A ZIP of `count` distinct 16x16 JPEGs (random pixels: no two alike), cached."""
    return random_jpeg_zip("null", name, count, seed, pixels=16, side=16)


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    role: str
    pid: int


def role_of(class_name: str) -> str | None:
    """The bench's name for a live actor's class (None: not one we measure)."""
    if class_name.endswith(":Ingress"):
        return "ingress"
    if class_name.endswith(":Embedder"):
        return "embedder"
    return {
        "Dispatcher": "dispatcher",
        "IndexShard": "index shard",
        "Monitor": "monitor",
        "ProxyActor": "serve proxy",
        "ServeController": "serve controller",
    }.get(class_name)


def _system_name(p: psutil.Process) -> str:
    """Ray's own processes by what they run: gcs_server, raylet, dashboard.py, ..."""
    with_name = p.name()
    if not with_name.startswith("python"):
        return with_name
    scripts = [Path(a).name for a in p.cmdline() if a.endswith(".py")]
    return scripts[0] if scripts else with_name


def processes(svc: Service) -> list[Proc]:
    """Every process the run costs: actors by role, redis-server, Ray's own, this driver."""
    out = [Proc(role, pid) for name, pid in actor_pids() if (role := role_of(name))]
    redis_pid = int(svc.redis.info("server")["process_id"])
    out.append(Proc("redis-server", redis_pid))
    out.append(Proc("bench driver (HTTP client, polling)", os.getpid()))
    taken = {p.pid for p in out} | {pid for _, pid in actor_pids()}
    for child in psutil.Process().children(recursive=True):
        if child.pid in taken:
            continue
        try:
            name = _system_name(child)
        except psutil.Error:
            continue
        # A replica still in its __init__ is not an ALIVE actor yet; its title names it.
        role = next((r for r in ("Embedder", "Ingress") if f"#{r}#" in name), None)
        out.append(Proc(role.lower() if role else f"ray: {name}", child.pid))
    return out


def cpu_seconds(procs: list[Proc]) -> dict[int, float]:
    """user + system CPU seconds of each live process so far."""
    out = {}
    for p in procs:
        try:
            t = psutil.Process(p.pid).cpu_times()
        except psutil.Error:
            continue
        out[p.pid] = t.user + t.system
    return out


def cpu_by_role(
    procs: list[Proc], before: dict[int, float], after: dict[int, float]
) -> dict[str, tuple[int, float]]:
    """role -> (processes, CPU seconds between the snapshots); a process born in between
    counts from zero (an autoscaled replica pays its start-up here)."""
    out: dict[str, tuple[int, float]] = {}
    for p in procs:
        if p.pid not in after:
            continue
        n, s = out.get(p.role, (0, 0.0))
        out[p.role] = (n + 1, s + after[p.pid] - before.get(p.pid, 0.0))
    return out


def merge(a: list[Proc], b: list[Proc]) -> list[Proc]:
    seen = {p.pid for p in a}
    return a + [p for p in b if p.pid not in seen]


# --------------------------------------------------------------------------- the run


@dataclass
class Phase:
    """One measured run: items committed, when, and what every process spent meanwhile."""

    name: str
    t0: float
    times: list[float]
    errors: int
    cpu: dict[str, tuple[int, float]]
    note: str = ""
    batch: int | None = None  # the Embedder's max_batch_size (None: as configs/local.yaml)
    passes: int = 0  # forward passes the replicas ran meanwhile, and the items in them
    pass_items: int = 0

    @property
    def label(self) -> str:
        return self.name if self.batch is None else f"{self.name}, batch {self.batch}"

    @property
    def per_pass(self) -> str:
        return f"{self.pass_items / self.passes:.0f}" if self.passes else "?"

    @property
    def done(self) -> int:
        return len(self.times)

    @property
    def wall_s(self) -> float:
        return max(self.times) - self.t0

    def steady(self) -> tuple[float, float]:
        """(items/s between the 5th and 95th percentile commit, seconds that took)."""
        t = sorted(self.times)
        lo, hi = int(0.05 * (len(t) - 1)), int(0.95 * (len(t) - 1))
        span = t[hi] - t[lo]
        return ((hi - lo) / span if span > 0 else float("inf")), span


def wait_all(svc: Service, users: list[str], n: int, timeout_s: float) -> float:
    """Until `n` items of `users` are done or failed; returns the time (one pipeline a poll)."""
    deadline = time.time() + timeout_s
    while True:
        pipe = svc.redis.pipeline(transaction=False)
        for user in users:
            pipe.zcard(svc.keys.done(user))
            pipe.hlen(svc.keys.errors(user))
        settled = sum(int(x) for x in pipe.execute())
        if settled >= n:
            return time.time()
        if time.time() > deadline:
            raise TimeoutError(f"{settled} of {n} settled in {timeout_s} s")
        time.sleep(0.1)


def collect(
    svc: Service,
    name: str,
    users: list[str],
    t0: float,
    procs: list[Proc],
    before: dict[int, float],
) -> Phase:
    procs = merge(procs, processes(svc))
    after = cpu_seconds(procs)
    times: list[float] = []
    errors = 0
    for user in users:
        times += svc.done_times(user).values()
        errors += svc.settled(user)[1]
    if not times:
        raise SystemExit(f"{name}: nothing was committed ({errors} items failed)")
    return Phase(name, t0, times, errors, cpu_by_role(procs, before, after))


class Profiler:
    """`py-spy record` (raw collapsed stacks) of chosen roles while a phase runs."""

    ROLES = ("ingress", "dispatcher", "embedder", "index shard", "monitor")

    def __init__(self, out: Path | None, phase: str, procs: list[Proc]) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).parent / "py-spy"
        for p in procs:
            if p.role in self.ROLES:
                path = out / f"{phase}-{p.role.replace(' ', '_')}-{p.pid}.txt"
                # --gil: samples holding the GIL, i.e. Python on a CPU, not threads waiting
                cmd = [str(spy), "record", "--format", "raw", "--nonblocking", "--gil", "-r", "50"]
                cmd += ["-p", str(p.pid), "-o", str(path)]
                self.children.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )

    def stop(self) -> None:
        for child in self.children:
            child.send_signal(signal.SIGINT)
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def set_batch(svc: Service, batch: int, timeout_s: float = 120.0) -> None:
    """Redeploy the Embedder with `max_batch_size` = `batch` (a reconfigure, no restart) and
    wait until every live replica's heartbeat says so, then for the dispatcher to re-pace."""
    from deploy import deploy

    config = svc.config
    app = config["applications"][0]
    dep = next(d for d in app["deployments"] if d["name"] == "Embedder")
    ongoing = max(int(dep.get("max_ongoing_requests", 0)), batch)
    set_deployment(
        config, "Embedder", max_ongoing_requests=ongoing, user_config={"max_batch_size": batch}
    )
    deploy(config, timeout_s=timeout_s)
    beats = Stores(svc.settings, svc.redis).heartbeats
    stale_s = svc.settings.monitor.stale_after_s
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = time.time()
        sizes = {
            b.get("batch") for b in beats.all().values() if now - float(b.get("ts", 0)) < stale_s
        }
        if sizes == {batch}:
            break
        time.sleep(0.5)
    else:
        print(f"# !! replicas still report batch sizes {sizes}, not {batch}", flush=True)
    time.sleep(1.5)  # the dispatcher re-reads the replicas' batch sizes every second
    print(f"# Embedder max_batch_size {batch} (max_ongoing_requests {ongoing})", flush=True)


def pass_counts(svc: Service) -> dict[str, tuple[int, int]]:
    """worker -> (forward passes, items in them) so far, from the Embedders' heartbeats."""
    beats = Stores(svc.settings, svc.redis).heartbeats.all()
    return {w: (int(b["passes"]), int(b["pass_items"])) for w, b in beats.items() if "passes" in b}


def count_passes(svc: Service, phase: Phase, before: dict[str, tuple[int, int]]) -> None:
    """Passes and their items since `before`, once every replica has beaten again (a replica
    started meanwhile counts from zero)."""
    time.sleep(svc.settings.monitor.heartbeat_interval_s + 0.5)
    for worker, (passes, items) in pass_counts(svc).items():
        was = before.get(worker, (0, 0))
        phase.passes += passes - was[0]
        phase.pass_items += items - was[1]


def upload_phase(
    svc: Service, users: list[tuple[str, dict[str, str]]], zips: list[Path], spy: Path | None
) -> Phase:
    """Every user uploads its ZIP at once over HTTP; until every item is committed."""
    procs = processes(svc)
    before = cpu_seconds(procs)
    counted = pass_counts(svc)
    profiler = Profiler(spy, "upload", procs)
    answered: list[float] = []
    queued: list[int] = []
    failures: list[str] = []

    def upload(headers: dict[str, str], path: Path) -> None:
        try:
            queued.append(len(svc.upload_zip(headers, path)["queued"]))
        except Exception as exc:  # noqa: BLE001 - reported, and the run stops below
            failures.append(repr(exc))
        answered.append(time.time())

    t0 = time.time()
    threads = [
        threading.Thread(target=upload, args=(h, z)) for (_, h), z in zip(users, zips, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        profiler.stop()
        raise SystemExit(f"uploads failed: {failures}")
    names = [u for u, _ in users]
    wait_all(svc, names, sum(queued), timeout_s=max(600.0, sum(queued) / 20))
    profiler.stop()
    phase = collect(svc, "upload -> done (HTTP)", names, t0, procs, before)
    phase.note = f"uploads answered after {max(answered) - t0:.1f} s"
    count_passes(svc, phase, counted)
    return phase


def backlog_phase(svc: Service, n_users: int, per_user: int, spy: Path | None) -> Phase:
    """The same items queued straight into Redis (as the ingress queues them), then one wake
    per dispatcher shard: the dispatch path alone, Redis -> Dispatcher -> Serve -> shards."""
    from actors.dispatcher import get_dispatcher
    from lumen.storage import Stores
    from lumen.storage.queue import NewItem

    queue = Stores(svc.settings, svc.redis).queue
    names = [f"cpq{i}{os.urandom(3).hex()}" for i in range(n_users)]
    t_fill = time.perf_counter()
    for user in names:
        for start in range(0, per_user, 1000):
            rows = [
                NewItem(f"img_{i:05d}.jpg", hashlib.sha256(f"{user}/{i}".encode()).hexdigest())
                for i in range(start, min(per_user, start + 1000))
            ]
            queue.enqueue(user, rows)
    fill_s = time.perf_counter() - t_fill
    procs = processes(svc)
    before = cpu_seconds(procs)
    counted = pass_counts(svc)
    profiler = Profiler(spy, "backlog", procs)
    t0 = time.time()
    ray.get([get_dispatcher(svc.settings, s).wake.remote() for s in range(dispatchers(svc))])
    wait_all(svc, names, n_users * per_user, timeout_s=max(600.0, n_users * per_user / 20))
    profiler.stop()
    phase = collect(svc, "queued backlog -> done", names, t0, procs, before)
    phase.note = f"queued into Redis in {fill_s:.1f} s before the clock started"
    count_passes(svc, phase, counted)
    return phase


def dispatchers(svc: Service) -> int:
    return svc.settings.queue.dispatchers


@ray.remote(num_cpus=0)
class EmptyActor:
    """The floor: what any live Ray actor costs while it does nothing of its own."""

    def pid(self) -> int:
        return os.getpid()


def idle_phase(
    svc: Service, seconds: float, spy: Path | None
) -> tuple[dict[str, tuple[int, float]], float]:
    """CPU of every process over `seconds` with nothing queued, and of an empty actor."""
    empty = EmptyActor.remote()  # type: ignore[attr-defined]
    empty_pid = ray.get(empty.pid.remote(), timeout=120)
    time.sleep(2.0)  # the last chunk's bookkeeping
    procs = [p for p in processes(svc) if p.pid != empty_pid]
    procs.append(Proc(REFERENCE, empty_pid))
    before = cpu_seconds(procs)
    profiler = Profiler(spy, "idle", procs)
    t0 = time.perf_counter()
    time.sleep(seconds)
    after = cpu_seconds(procs)
    elapsed = time.perf_counter() - t0
    profiler.stop()
    ray.kill(empty)
    return cpu_by_role(procs, before, after), elapsed


# --------------------------------------------------------------------------- the report


ORDER = [
    "ingress",
    "dispatcher",
    "index shard",
    "monitor",
    "embedder",
    "serve proxy",
    "serve controller",
    "redis-server",
    REFERENCE,
]


def ceilings(p: Phase) -> tuple[str, float, float]:
    """What the CPU per item allows, whatever else runs on the box: (the service role whose
    processes saturate first, its items/s with one core per process (each is one Python or
    Redis thread's worth), and items/s if every process of the run shared all the cores)."""
    per_role = {
        role: n * 1e6 / (cpu / p.done * 1e6)
        for role, (n, cpu) in p.cpu.items()
        if role in ORDER and role != REFERENCE and cpu > 0 and p.done
    }
    if not per_role:
        return "?", float("nan"), float("nan")
    role = min(per_role, key=per_role.__getitem__)
    total = sum(cpu for _, cpu in p.cpu.values())
    return role, per_role[role], (os.cpu_count() or 1) * p.done / total


def report(phases: list[Phase], idle: dict[str, tuple[int, float]], idle_s: float) -> None:
    for p in phases:
        print(f"# {p.label}: {p.done:,} done, {p.errors} errors, wall {p.wall_s:.1f} s; {p.note}")
    rows = []
    bounds = []
    for p in phases:
        role, role_cap, box_cap = ceilings(p)
        n = p.cpu.get(role, (0, 0.0))[0]
        bounds.append(
            [p.label, f"{role} (x{n})", f"{role_cap:.0f}", f"{box_cap:.0f}", os.cpu_count()]
        )
        rate, span = p.steady()
        rows.append(
            [
                p.label,
                f"{p.done:,}",
                p.per_pass,
                f"{rate:.0f}",
                f"{span:.1f}",
                f"{p.done / p.wall_s:.0f}",
                f"{p.wall_s:.1f}",
                f"{rate / TARGET_ITEMS_PER_S:.2f}",
                "PASS" if rate >= TARGET_ITEMS_PER_S else "FAIL",
            ]
        )
    table(
        f"Control plane: items/s committed, null model (target >= {TARGET_ITEMS_PER_S:,.0f})",
        [
            "path",
            "items",
            "images / forward pass",
            "steady items/s (p5..p95 commits)",
            "p5..p95 s",
            "items/s over wall",
            "wall s",
            "steady / target",
            "verdict",
        ],
        rows,
    )
    table(
        "CPU-bound ceilings: items/s the measured CPU per item allows on an otherwise idle box",
        [
            "path",
            "first to saturate",
            "its ceiling items/s (1 core per process)",
            "box ceiling items/s (all processes, all cores)",
            "cores",
        ],
        bounds,
    )
    roles = set(idle)
    for p in phases:
        roles |= set(p.cpu)
    ordered = ORDER + sorted(r for r in roles if r not in ORDER)
    rows = []
    for role in ordered:
        if role not in roles:
            continue
        n = max([idle.get(role, (0, 0.0))[0]] + [p.cpu.get(role, (0, 0.0))[0] for p in phases])
        row: list[object] = [role, n]
        for p in phases:
            cpu = p.cpu.get(role, (0, 0.0))[1]
            row += [f"{cpu / max(p.done, 1) * 1e6:.0f}", f"{100 * cpu / p.wall_s:.0f}"]
        row.append(f"{100 * idle.get(role, (0, 0.0))[1] / idle_s:.2f}")
        rows.append(row)
    total: list[object] = ["all of the above", ""]
    for p in phases:
        cpu = sum(s for _, s in p.cpu.values())
        total += [f"{cpu / max(p.done, 1) * 1e6:.0f}", f"{100 * cpu / p.wall_s:.0f}"]
    total.append(f"{100 * sum(s for _, s in idle.values()) / idle_s:.2f}")
    rows.append(total)
    header = ["process", "n"]
    for i, _ in enumerate(phases):
        header += [f"[{i + 1}] CPU-us / item", f"[{i + 1}] % core"]
    header.append("idle % core")
    legend = "; ".join(f"[{i + 1}] {p.label}" for i, p in enumerate(phases))
    table(f"CPU per process ({legend}; idle over {idle_s:.0f} s)", header, rows)
    control = sum(idle.get(r, (0, 0.0))[1] for r in CONTROL_PLANE)
    pct = 100 * control / idle_s
    table(
        "Idle control plane (dispatcher + index shards + monitor + ingress), nothing queued",
        ["% of one core", "target %", "idle / target", "verdict"],
        [
            [
                f"{pct:.2f}",
                f"{TARGET_IDLE_CORE_PCT:.0f}",
                f"{pct / TARGET_IDLE_CORE_PCT:.2f}",
                "PASS" if pct <= TARGET_IDLE_CORE_PCT else "FAIL",
            ]
        ],
    )


def compare_report(runs: list[tuple[int, Phase]]) -> None:
    """Each backlog run by its batch size and user count, then, per batch size, the many-user
    rate against the 1-user rate (medians over the rounds, all measured in this run)."""
    cols = ("dispatcher", "index shard", "embedder", "redis-server")
    rows = []
    rates: dict[int | None, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for users, p in runs:
        rate, _ = p.steady()
        rates[p.batch][users].append(rate)
        cpu = [p.cpu.get(c, (0, 0.0))[1] / max(p.done, 1) * 1e6 for c in cols]
        total = sum(s for _, s in p.cpu.values()) / max(p.done, 1) * 1e6
        rows.append(
            [p.batch or "as configured", users, f"{p.done:,}", p.per_pass, f"{rate:.0f}"]
            + [f"{p.wall_s:.1f}", f"{rate / TARGET_ITEMS_PER_S:.2f}"]
            + [f"{c:.0f}" for c in cpu]
            + [f"{total:.0f}"]
        )
    table(
        f"Queued backlog -> done by batch size and users (same items in all; target >= "
        f"{TARGET_ITEMS_PER_S:,.0f} items/s)",
        ["batch", "users", "items", "images / pass", "steady items/s", "wall s", "/ target"]
        + [f"{c} CPU-us / item" for c in cols]
        + ["all CPU-us / item"],
        rows,
    )
    out = []
    for batch, by_users in rates.items():
        counts = sorted(by_users)
        base = statistics.median(by_users[counts[0]])
        for users in counts[1:]:
            many = statistics.median(by_users[users])
            ratio = many / base
            out.append(
                [
                    batch or "as configured",
                    f"{users} / {counts[0]}",
                    f"{base:.0f}",
                    f"{many:.0f}",
                    f"{ratio:.2f}",
                    f"{TARGET_FAIR_RATIO}",
                    "PASS" if ratio >= TARGET_FAIR_RATIO else "FAIL",
                ]
            )
    rounds = len(next(iter(next(iter(rates.values())).values())))
    table(
        f"Many users vs one: steady items/s, medians of {rounds} round(s)",
        ["batch", "users", "one-user items/s", "many-user items/s", "ratio", "target", "verdict"],
        out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="items in all, split over users")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="4,000 items, 10 s idle")
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="record raw py-spy stacks of the hot actors here"
    )
    parser.add_argument(
        "--compare",
        default="",
        help="user counts, e.g. 1,21: only the backlog phase, once per count per round",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --compare")
    parser.add_argument(
        "--batch",
        default="",
        help="Embedder max_batch_size values, e.g. 32,256: every phase runs at each in turn",
    )
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batch.split(",")] if args.batch else [None]
    if args.compare:
        compare(args)
        return
    if args.quick:
        args.items, args.idle_s = 4_000, 10.0
    per_user = args.items // args.users
    # Before Ray starts (every worker inherits it) and before the driver validates Settings.
    os.environ[BENCHMARK_ENV] = BENCHMARK_ENV_VALUE
    print_machine()
    warm_zip = jpeg_zip("warm", WARMUP_ITEMS, 0)
    zips = [jpeg_zip("user", per_user, 1 + i) for i in range(args.users)]

    with running_service({"model": {"benchmark_null": True}}) as svc:
        warm, warm_headers = svc.new_user("warm")
        svc.upload_zip(warm_headers, warm_zip)
        svc.wait_settled(warm, WARMUP_ITEMS, timeout_s=300)
        phases: list[Phase] = []
        for batch in args.batches:
            if batch is not None:
                set_batch(svc, batch)
            spy = spy_dir(args.py_spy, batch)
            users = [svc.new_user("cp", address=bench_address()) for _ in range(args.users)]
            phases.append(upload_phase(svc, users, zips, spy))
            phases.append(backlog_phase(svc, args.users, per_user, spy))
            for phase in phases[-2:]:
                phase.batch = batch
        redis_time(svc)
        idle, idle_s = idle_phase(svc, args.idle_s, args.py_spy)
        pids = defaultdict(list)
        for p in processes(svc):
            pids[p.role].append(p.pid)
    report(phases, idle, idle_s)
    print("# pids: " + "; ".join(f"{r} {sorted(v)}" for r, v in sorted(pids.items())), flush=True)
    if args.py_spy is not None:
        print(f"# py-spy raw stacks in {args.py_spy}", flush=True)


def redis_time(svc: Service, top: int = 10) -> None:
    """Where redis-server's time went over the whole run (INFO commandstats; the Lua
    scripts together under evalsha, the commands they run also under their own names)."""
    stats = svc.redis.info("commandstats")
    rows = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:top]
    table(
        "redis-server: time by command over the whole run (INFO commandstats)",
        ["command", "calls", "usec / call", "seconds"],
        [
            [c.removeprefix("cmdstat_"), v["calls"], f"{v['usec_per_call']:.1f}", v["usec"] / 1e6]
            for c, v in rows
        ],
    )


def spy_dir(out: Path | None, batch: int | None, sub: str = "") -> Path | None:
    """Where py-spy stacks of one phase go (None: not recorded)."""
    if out is None:
        return None
    path = out / f"b{batch}" if batch is not None else out
    return path / sub if sub else path


def compare(args: argparse.Namespace) -> None:
    """The backlog phase at each user count of `--compare`, alternating, `--rounds` times."""
    counts = [int(c) for c in args.compare.split(",")]
    os.environ[BENCHMARK_ENV] = BENCHMARK_ENV_VALUE
    print_machine()
    warm_zip = jpeg_zip("warm", WARMUP_ITEMS, 0)
    runs: list[tuple[int, Phase]] = []
    with running_service({"model": {"benchmark_null": True}}) as svc:
        warm, warm_headers = svc.new_user("warm")
        svc.upload_zip(warm_headers, warm_zip)
        svc.wait_settled(warm, WARMUP_ITEMS, timeout_s=300)
        for batch in args.batches:
            if batch is not None:
                set_batch(svc, batch)
            for r in range(args.rounds):
                for users in counts:
                    spy = spy_dir(args.py_spy, batch, f"r{r}-u{users}")
                    phase = backlog_phase(svc, users, args.items // users, spy)
                    phase.batch = batch
                    rate, _ = phase.steady()
                    print(
                        f"# {phase.label}, round {r + 1}, {users} user(s): {rate:.0f} items/s,"
                        f" {phase.per_pass} images / pass",
                        flush=True,
                    )
                    runs.append((users, phase))
        redis_time(svc)
    compare_report(runs)
    if args.py_spy is not None:
        print(f"# py-spy raw stacks in {args.py_spy}", flush=True)


if __name__ == "__main__":
    main()
