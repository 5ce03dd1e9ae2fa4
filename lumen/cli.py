"""The `lumen` command: sign in, upload, follow the queue, search and ask PDFs from a shell."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lumen.client import (
    DEFAULT_URL,
    ApiError,
    ClientError,
    LumenClient,
    StreamEnded,
    Unreachable,
    pending,
    settled,
)

if TYPE_CHECKING:
    from lumen.auth import UserStore
    from lumen.config import Settings

Command = Callable[[LumenClient, argparse.Namespace], int]

# `status --follow` reconnects after a stream ends on purpose (an account reset) at most
# this many times in a row without a snapshot in between.
MAX_STREAM_RESTARTS = 3


def token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "lumen" / "token"


def save_token(token: str) -> Path:
    path = token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    path.chmod(0o600)
    return path


def load_token(args: argparse.Namespace) -> str | None:
    token = getattr(args, "token", None) or os.environ.get("LUMEN_TOKEN")
    if token:
        return str(token)
    path = token_path()
    return path.read_text().strip() if path.is_file() else None


def render_bar(done: float, total: float, width: int = 30) -> str:
    """`[#######.......]  47%`; an empty total reads as complete."""
    frac = 1.0 if total <= 0 else max(0.0, min(1.0, done / total))
    filled = round(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}%"


def human_bytes(n: float) -> str:
    """`0 B`, `512 B`, `12.3 MB`, `20 GB` (powers of 1024; a whole number drops its `.0`)."""
    units = ("B", "KB", "MB", "GB", "TB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n, step = n / 1024, step + 1
    number = f"{n:.0f}" if step == 0 else f"{n:.1f}".removesuffix(".0")
    return f"{number} {units[step]}"


def usage_line(usage: dict[str, int]) -> str:
    """`12.3 MB of 20 GB, 40 of 200,000 items`; a quota of 0 reads `(unlimited)`."""
    size, items = human_bytes(usage["bytes"]), f"{usage['items']:,}"
    max_bytes, max_items = usage["max_bytes"], usage["max_items"]
    stored = f"{size} of {human_bytes(max_bytes)}" if max_bytes else f"{size} (unlimited)"
    counted = f"{items} of {max_items:,} items" if max_items else f"{items} items (unlimited)"
    return f"{stored}, {counted}"


class Bar:
    """A one-line progress bar redrawn in place on a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.drawn = False
        self.width = 0

    def draw(self, done: float, total: float, note: str = "") -> None:
        line = f"{render_bar(done, total)} {note}"
        self.stream.write(f"\r{line.ljust(self.width)}")
        self.stream.flush()
        self.drawn, self.width = True, len(line)

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def password_for(args: argparse.Namespace) -> str:
    return args.password or os.environ.get("LUMEN_PASSWORD") or getpass.getpass("Password: ")


def cmd_signup(client: LumenClient, args: argparse.Namespace) -> int:
    password = password_for(args)
    print(client.signup(args.username, password))
    return cmd_login(client, args, password)


def cmd_login(client: LumenClient, args: argparse.Namespace, password: str | None = None) -> int:
    token = client.login(args.username, password or password_for(args))
    print(f"Logged in as {args.username}; token saved to {save_token(token)}")
    return 0


def cmd_logout(client: LumenClient, args: argparse.Namespace) -> int:
    token_path().unlink(missing_ok=True)
    print("Logged out.")
    return 0


def cmd_upload(client: LumenClient, args: argparse.Namespace) -> int:
    for path in args.paths:
        print_upload(path, upload_with_bar(client, path))
    with contextlib.suppress(ApiError):  # informational; the uploads are reported above
        print(f"Storage: {usage_line(client.usage())}")
    return 0


def cmd_usage(client: LumenClient, args: argparse.Namespace) -> int:
    usage = client.usage()
    print(json.dumps(usage, indent=2) if args.json else f"Storage: {usage_line(usage)}")
    return 0


def upload_with_bar(client: LumenClient, path: Path) -> dict[str, Any]:
    bar = Bar()

    def progress(sent: int, size: int) -> None:
        bar.draw(sent, size, f"{human_bytes(sent)} / {human_bytes(size)}  {path.name}")

    try:
        return client.upload(path, progress)
    finally:
        bar.finish()


def print_upload(path: Path, out: dict[str, Any]) -> None:
    print(f"{path}: {out.get('message', '')} ({len(out.get('queued', []))} queued)")
    for member, why in (out.get("duplicates") or {}).items():
        print(f"  duplicate  {member}: {why}")
    for member, why in (out.get("skipped") or {}).items():
        print(f"  skipped    {member}: {why}")


def cmd_search(client: LumenClient, args: argparse.Namespace) -> int:
    if not args.query and not args.image:
        raise ClientError("give a text query, --image FILE, or both")
    results = client.search(args.query, args.image, args.k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    rows = [[f"{r['similarity']:.3f}", r["filename"], r.get("caption") or ""] for r in results]
    header = ["similarity", "filename", "caption"]
    if args.links:
        header.append("link")
        for row, r in zip(rows, results, strict=True):
            row.append(str(client.http.base_url.join(r["image_url"])) if r.get("image_url") else "")
    print_table(header, rows)
    return 0


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if not rows:
        print("(nothing)")
        return
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def status_line(st: dict[str, Any]) -> str:
    line = (
        f"done {len(st.get('done', []))}  queued {st.get('queue', 0)}  "
        f"processing {len(st.get('processing', []))}  errors {len(st.get('errors', {}))}"
    )
    wait = st.get("waiting_for_worker")  # items wait and no Embedder replica runs
    return f"{line}  ({wait})" if wait else line


def status_total(st: dict[str, Any]) -> int:
    return len(st.get("done", [])) + pending(st) + len(st.get("errors", {}))


def follow(client: LumenClient, items: Sequence[str] = ()) -> dict[str, Any]:
    """Draw the queue's progress until `items` (or everything) settle; the last snapshot.

    A stream the service ends on purpose (an account reset) is opened again; an expired
    token then gets its 401 like any other command.
    """
    bar, last, restarts = Bar(), {}, 0
    try:
        while True:
            try:
                for last in client.events("/status"):
                    restarts = 0
                    bar.draw(len(last.get("done", [])), status_total(last), status_line(last))
                    if settled(last, items):
                        return last
                return last
            except StreamEnded:
                restarts += 1
                if restarts > MAX_STREAM_RESTARTS:
                    raise
    finally:
        bar.finish()


def print_errors(st: dict[str, Any]) -> None:
    errors = st.get("errors") or {}
    for item, why in errors.items():
        print(f"  error  {item}: {why}")
    if errors:
        print("  (`lumen retry ITEM` or `--all` queues failed items again; `lumen delete ITEM`)")


def cmd_status(client: LumenClient, args: argparse.Namespace) -> int:
    st = follow(client) if args.follow else client.snapshot("/status")
    if not args.follow:
        print(status_line(st))
        for item in st.get("processing", []):
            print(f"  processing  {item} on {st.get('processing_workers', {}).get(item, '?')}")
    print_errors(st)
    return 0


def cmd_ask(client: LumenClient, args: argparse.Namespace) -> int:
    if not args.no_upload:
        out = upload_with_bar(client, args.pdf)
        print_upload(args.pdf, out)
        follow(client, out.get("queued", []))
    answer = client.search_pdf(args.question, args.k)
    top = answer.get("top_result")
    if not top:
        print(answer.get("message") or "No matching page.")
        return 1
    where = f"{top.get('doc') or top['filename']}, page {top.get('page') or '?'}"
    print(f"{where} (similarity {top['similarity']:.3f})\n")
    print(answer.get("gemini_answer") or f"No answer: {answer.get('gemini_reason')}")
    return 0


def cmd_done(client: LumenClient, args: argparse.Namespace) -> int:
    print("\n".join(client.done()) or "(nothing done yet)")
    return 0


def cmd_delete(client: LumenClient, args: argparse.Namespace) -> int:
    print(client.delete(args.item))
    return 0


# A retry refused for one item (it has not failed, or is unknown) is reported and the
# others still go; any other error (401, 429, 5xx) stops the command as usual.
ITEM_REFUSALS = frozenset({404, 409})


def cmd_retry(client: LumenClient, args: argparse.Namespace) -> int:
    if args.all == bool(args.items):
        raise ClientError("give the failed ITEMs to retry, or --all (not both)")
    if args.all:
        answer = client.retry_all()
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            print(answer.get("message", ""))
            for item in answer.get("requeued", []):
                print(f"  requeued  {item}")
        return 0
    requeued: list[str] = []
    refused: dict[str, dict[str, Any]] = {}
    for item in args.items:
        try:
            answer = client.retry(item)
        except ApiError as exc:
            if exc.status not in ITEM_REFUSALS:
                raise
            refused[item] = {"status": exc.status, "code": exc.code, "detail": exc.detail}
            if not args.json:
                print(f"error: {item}: {exc.detail} (HTTP {exc.status})", file=sys.stderr)
            continue
        requeued.extend(answer.get("requeued", []))
        if not args.json:
            print(answer.get("message", ""))
    if args.json:
        print(json.dumps({"requeued": requeued, "refused": refused}, indent=2))
    return 2 if refused else 0


def cmd_reset(client: LumenClient, args: argparse.Namespace) -> int:
    if not args.yes:
        raise ClientError("reset deletes your index, files and queue; pass --yes to confirm")
    print(client.reset())
    return 0


def cmd_reindex(client: LumenClient, args: argparse.Namespace) -> int:
    report = client.reindex(args.user, start=not args.status)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"deployed model: {report['model']}   job: {report['job'] or 'none pending'}")
    rows = [
        (user, p.get("state", ""), p.get("model", ""), f"{p.get('done', 0)}/{p.get('total', 0)}")
        for user, p in sorted(report["users"].items())
    ]
    if rows:
        print_table(("user", "state", "model", "done"), rows)
    waiting = report["users_on_other_models"]
    if waiting:
        print(f"{len(waiting)} user(s) still on another model: {', '.join(waiting[:10])}")
    return 0


def cmd_workers(client: LumenClient, args: argparse.Namespace) -> int:
    workers = client.snapshot("/monitor/worker")
    rows = []
    for wid, w in sorted(workers.items()):
        m = w.get("metrics") or {}
        age = f"{time.time() - m['ts']:.0f}s ago" if m.get("ts") else ""
        rows.append((wid, w.get("status", "?"), _pct(m.get("cpu")), _pct(m.get("mem")), age))
    print_table(("worker", "status", "cpu", "mem", "seen"), rows)
    return 0


def _pct(value: Any) -> str:
    return f"{value:.1f}%" if isinstance(value, int | float) else "-"


def cmd_events(client: LumenClient, args: argparse.Namespace) -> int:
    for ev in client.snapshot("/monitor/events"):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.get("ts", 0)))
        rest = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("ts", "type"))
        print(f"{when}  {ev.get('type', '?'):<14} {rest}")
    return 0


# --- operator commands: run on a server node, straight against Redis (no HTTP) ---------------


def operator_users(settings: Settings) -> UserStore:
    """The account store that `lumen admin` writes to, from `LUMEN_*` settings."""
    from lumen.storage import Stores

    return Stores(settings).users


def new_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != password:
        raise ClientError("the two passwords differ; nothing was created")
    return password


def cmd_admin_create_user(client: LumenClient, args: argparse.Namespace) -> int:
    """Create an account directly in Redis; works while public signup is closed."""
    from lumen.auth import create_account
    from lumen.config import Settings
    from lumen.errors import LumenError
    from lumen.storage import REDIS_ERRORS

    password = new_password(args)
    settings = Settings()
    try:
        create_account(operator_users(settings), settings.auth, args.username, password)
    except LumenError as exc:
        raise ClientError(exc.message) from exc
    except REDIS_ERRORS as exc:
        raise ClientError(f"Redis did not answer ({exc}); check LUMEN_REDIS__URL") from exc
    print(f"Created user {args.username}.")
    return 0


def cmd_models_pull(client: LumenClient, args: argparse.Namespace) -> int:
    """Stage open_clip weights once, with a sha256, where replicas load them from."""
    from lumen.config import Settings
    from lumen.models import (
        Source,
        StagedWeightsError,
        hub_source,
        local_repo_files,
        pull,
        pull_hf_files,
    )

    model = Settings().model
    name, tag = args.name or model.name, args.tag or model.pretrained
    if not tag:
        raise ClientError("give a pretrained TAG (LUMEN_MODEL__PRETRAINED is not set)")
    target = args.to or model.staged_dir or str(Settings().data_dir / "models")
    bar = Bar()

    def progress(done: int, size: int | None) -> None:
        bar.draw(done, size or done, f"{human_bytes(done)}  {name} {tag}")

    try:
        source = Source(args.source, args.sha256) if args.source else None
        if source is None and args.sha256:
            hub = hub_source(name, tag)
            source = Source(hub.url, args.sha256, hub.file_name)
        staged, fetched = pull(name, tag, target, source, progress)
        bar.finish()
        verb = "Staged" if fetched else "Already staged"
        print(f"{verb} {name} {tag}: {staged.file} ({human_bytes(staged.bytes)})")
        print(f"sha256 {staged.sha256}")
        repo_files = local_repo_files(args.hf_source) if args.hf_source else None
        for repo, fetched in pull_hf_files(name, target, repo_files):
            verb = "Staged" if fetched else "Already staged"
            print(f"{verb} {' and '.join(repo.roles)} files of {repo.repo}: {repo.folder}")
    except (StagedWeightsError, ValueError) as exc:
        raise ClientError(str(exc)) from exc
    finally:
        bar.finish()
    print(f"Replicas load it with LUMEN_MODEL__STAGED_DIR={target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"default $LUMEN_URL or {DEFAULT_URL}"
    )
    common.add_argument(
        "--token", default=argparse.SUPPRESS, help="default $LUMEN_TOKEN or the saved one"
    )
    parser = argparse.ArgumentParser(prog="lumen", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    for name, func, what in (
        ("signup", cmd_signup, "create an account and log in"),
        ("login", cmd_login, "log in and save the token"),
    ):
        p = add(name, func, what)
        p.add_argument("username")
        p.add_argument("--password", help="default $LUMEN_PASSWORD, else prompted")
    add("logout", cmd_logout, "forget the saved token")
    add("upload", cmd_upload, "upload .zip/.pdf files or image folders").add_argument(
        "paths", nargs="+", type=Path, metavar="PATH"
    )
    p = add("search", cmd_search, "search your images by text and/or image")
    p.add_argument("query", nargs="?")
    p.add_argument("--image", type=Path)
    p.add_argument("-k", type=int, default=5, help="results (default 5)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--links",
        action="store_true",
        help="add each image's signed link (opens without a token; expires)",
    )
    add("usage", cmd_usage, "show what you store against your quota").add_argument(
        "--json", action="store_true"
    )
    add("status", cmd_status, "show the queue").add_argument(
        "--follow", action="store_true", help="live progress until the queue is empty"
    )
    p = add("ask", cmd_ask, "upload a PDF, wait for it, and ask a question about it")
    p.add_argument("pdf", type=Path)
    p.add_argument("question")
    p.add_argument("--no-upload", action="store_true", help="ask the PDFs already indexed")
    p.add_argument("-k", type=int, default=1)
    add("done", cmd_done, "list processed items")
    add("delete", cmd_delete, "remove a waiting or failed item and its file").add_argument("item")
    p = add("retry", cmd_retry, "queue failed items again, each with a fresh retry budget")
    p.add_argument("items", nargs="*", metavar="ITEM", help="failed items (see `lumen status`)")
    p.add_argument("--all", action="store_true", help="every failed item")
    p.add_argument("--json", action="store_true")
    add("reset", cmd_reset, "delete all your data").add_argument("--yes", action="store_true")
    p = add(
        "reindex",
        cmd_reindex,
        "operators: re-embed spaces on an older model with the deployed one (and show progress)",
    )
    p.add_argument("--user", help="only this user's space")
    p.add_argument("--status", action="store_true", help="show progress; start nothing")
    p.add_argument("--json", action="store_true")
    add("workers", cmd_workers, "show embedding workers")
    add("events", cmd_events, "show recent system events")
    admin = sub.add_parser(
        "admin",
        help="operator commands, run on a server node with its LUMEN_* environment",
        description="Operator commands: they talk to Redis directly, not to the HTTP API.",
    )
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    p = admin_sub.add_parser(
        "create-user",
        help="create an account (also while public signup is closed)",
        description="Create an account in the Redis named by LUMEN_REDIS__URL.",
    )
    p.add_argument("username")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin, not a prompt"
    )
    p.set_defaults(func=cmd_admin_create_user)
    models = sub.add_parser(
        "models",
        help="stage model weights on the shared data root (run on a node with the hub)",
        description="Model weights for the Embedder: stage them once so no replica start "
        "downloads anything.",
    )
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    p = models_sub.add_parser(
        "pull",
        help="download open_clip weights once, with a sha256, into a staged-weights folder",
        description="Download NAME TAG (default: LUMEN_MODEL__NAME, LUMEN_MODEL__PRETRAINED) "
        "into DIR/NAME/TAG with a checksum. Replicas load them with LUMEN_MODEL__STAGED_DIR=DIR.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="open_clip architecture")
    p.add_argument("tag", nargs="?", metavar="TAG", help="open_clip pretrained tag")
    p.add_argument(
        "--to", help="staged-weights folder (default LUMEN_MODEL__STAGED_DIR, else DATA_DIR/models)"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="download from this URL (http, https, file://) or local path instead of the hub",
    )
    p.add_argument("--sha256", help="the checksum the file must have (refused otherwise)")
    p.add_argument(
        "--hf-from",
        dest="hf_source",
        metavar="DIR",
        help="take the Hugging Face tokenizer/config files a model needs (multilingual, SigLIP) "
        "from DIR/<repo id>/ instead of the hub",
    )
    p.set_defaults(func=cmd_models_pull)
    return parser


def run(argv: Sequence[str] | None = None, client: LumenClient | None = None) -> int:
    """Parse `argv` and run it; errors become a message on stderr and an exit status."""
    args = build_parser().parse_args(argv)
    url = getattr(args, "url", None) or os.environ.get("LUMEN_URL") or DEFAULT_URL
    client = client or LumenClient(url)
    client.token = client.token or load_token(args)
    try:
        return int(args.func(client, args))
    except ApiError as exc:
        hint = " - run `lumen login USER`" if exc.status == 401 else ""
        if exc.retry_after_s is not None:
            hint = f" - try again in {exc.retry_after_s} s"
        print(f"error: {exc.detail} (HTTP {exc.status}){hint}", file=sys.stderr)
        return 2 if exc.status < 500 else 1
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ClientError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    finally:
        client.close()


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
