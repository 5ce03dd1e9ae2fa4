"""Framework-free core pieces: fairness plan, worker book, paths, auth rules, settings."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from lumen.auth import validate_password, validate_username
from lumen.config import AuthSettings, Settings, load_or_create_secret
from lumen.dispatch import RoundRobin
from lumen.errors import BadRequest, LimitExceeded, LumenError, NotFound, TooManyRequests
from lumen.health import ReplicaState, WorkerBook
from lumen.paths import resolve_item


def test_round_robin_gives_every_active_user_an_equal_share() -> None:
    rr = RoundRobin()
    assert rr.plan(["heavy", "light"], capacity=64, max_per_user=32) == [
        ("heavy", 32),
        ("light", 32),
    ]
    assert rr.plan(["heavy", "light"], capacity=10, max_per_user=32) == [
        ("heavy", 5),
        ("light", 5),
    ]


def test_round_robin_never_exceeds_capacity_and_serves_many_users_over_rounds() -> None:
    rr = RoundRobin()
    users = [f"u{i}" for i in range(10)]
    served: set[str] = set()
    for _ in range(3):
        plan = rr.plan(users, capacity=4, max_per_user=32)
        assert sum(n for _, n in plan) <= 4
        served |= {u for u, _ in plan}
    assert served == set(users)  # nobody waits more than ceil(10 / 4) rounds
    assert rr.plan([], capacity=10, max_per_user=5) == []
    assert rr.plan(users, capacity=0, max_per_user=5) == []


def test_worker_book_reports_health_stale_and_dead_then_ages_dead_out() -> None:
    book = WorkerBook(stale_after_s=10, dead_ttl_s=100)
    reps = [ReplicaState("embedder-a", "ALIVE"), ReplicaState("embedder-b", "ALIVE")]
    beats = {"embedder-a": {"cpu": 1.0, "mem": 2.0, "ts": 1000}, "embedder-b": {"ts": 900}}
    view, dead = book.update(reps, beats, now=1005)
    assert view["embedder-a"]["status"] == "health" and view["embedder-a"]["metrics"]["cpu"] == 1.0
    assert view["embedder-b"]["status"] == "stale" and dead == []
    view, dead = book.update(
        [ReplicaState("embedder-a", "DEAD", death_cause="killed")], beats, now=1010
    )
    assert view == {"embedder-a": {"status": "dead", "cause": "killed"}} and dead == ["embedder-a"]
    _, dead = book.update([ReplicaState("embedder-a", "DEAD")], beats, now=1020)
    assert dead == []  # reported once
    view, _ = book.update([ReplicaState("embedder-a", "DEAD")], beats, now=1200)
    assert view == {}


@pytest.mark.parametrize(
    "item",
    [
        "uploads/bob/a.jpg", "uploads/alice/../bob/a.jpg", "../etc/passwd", "uploads/alice",
        "/etc/passwd", "uploads/alice/../../x", "data/uploads/bob/a.jpg",
    ],
)  # fmt: skip
def test_paths_outside_the_users_folder_are_not_found(tmp_path: Path, item: str) -> None:
    with pytest.raises(NotFound):
        resolve_item(tmp_path, "alice", item)


def test_symlinks_leading_out_of_the_users_folder_are_not_found(tmp_path: Path) -> None:
    folder = tmp_path / "uploads" / "alice"
    folder.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (folder / "link.jpg").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(NotFound):
        resolve_item(tmp_path, "alice", "uploads/alice/link.jpg")


def test_item_forms_the_api_shows_resolve_to_the_same_file(tmp_path: Path) -> None:
    expected = (tmp_path / "uploads" / "alice" / "pdfs" / "a.jpg").resolve()
    for item in (
        "uploads/alice/pdfs/a.jpg",
        "/uploads/alice/pdfs/a.jpg",
        "/data/uploads/alice/pdfs/a.jpg",
    ):
        assert resolve_item(tmp_path, "alice", item) == expected


@pytest.mark.parametrize("name", ["abc", "a.b-c_d", "A" * 64, "_x1"])
def test_good_usernames_pass(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", ["ab", ".abc", "a b c", "a/b/c", "x" * 65, "naïve"])
def test_bad_usernames_are_refused(name: str) -> None:
    with pytest.raises(BadRequest):
        validate_username(name)


def test_password_length_rules() -> None:
    s = AuthSettings()
    with pytest.raises(BadRequest):
        validate_password("short", s)
    with pytest.raises(BadRequest):
        validate_password("x" * (s.max_password_chars + 1), s)
    assert validate_password("long enough", s) == "long enough"


@pytest.mark.parametrize("secret", ["changeme", "secret", "tooshort"])
def test_settings_refuse_placeholder_or_short_jwt_secrets(secret: str) -> None:
    with pytest.raises(ValidationError):
        Settings(auth={"jwt_secret": secret})


def test_the_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "jwt_secret"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert load_or_create_secret(path) == first
    settings = Settings(data_dir=tmp_path).with_local_secret()
    assert settings.auth.jwt_secret == first


def test_errors_keep_their_fields_through_pickling() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(LimitExceeded("too big", "max_upload_bytes")))
    assert isinstance(exc, LumenError) and exc.limit == "max_upload_bytes" and exc.status == 413
    slow = pickle.loads(pickle.dumps(TooManyRequests("wait", 42)))
    assert slow.retry_after_s == 42 and str(slow) == "wait"
