"""Every Redis key template, in one place (the arq habit).

Lua scripts receive every key they touch from here (KEYS); none is built inside Lua. Each
per-user key carries the user as a Redis Cluster hash tag (`lumen:queue:{alice}`), so one
user's keys share a slot; the few cross-user keys (deadline, active, events, heartbeat,
throttle) do not.

Per user `u` (items are the user-relative paths the API shows, e.g. `uploads/u/a.jpg`):

    user:{u}            hash   password hash, created
    queue:{u}           list   queued items, oldest first
    processing:{u}      hash   item -> worker id
    deadline            zset   "{u}\\0{item}" -> deadline (epoch s), across users
    done:{u}            zset   item -> completion time
    errors:{u}          hash   item -> last error message
    retries:{u}         hash   item -> retry count
    meta:{u}            hash   item -> JSON metadata (sha256, size, kind, doc, page)
    caption:{u}         hash   item -> zero-shot caption made at indexing time
    pdftext:{u}         hash   PDF page item -> the page's extracted text
    sha:{u}             hash   sha256 -> item (content dedupe)
    vec:{u}             hash   vector id -> float32 bytes
    vid:{u}             hash   item -> vector id
    vitem:{u}           hash   vector id -> item
    vseq:{u}            string last vector id issued
    vinfo:{u}           hash   model, dim of the user's vectors
    usage:{u}           hash   bytes, items: the stored files of the user's items (quotas)
    reply:{u}:{token}   string a script call's answer, kept a few minutes (idempotent retries)
    active              set    users with queued items (the dispatcher's round robin)
    events              list   monitor events, newest first (capped)
    heartbeat           hash   worker id -> JSON metrics
    throttle:{subject}  string attempt counter with a TTL (the subject is not a hash tag):
                               `login-addr:A`, `login-user:U|A`, `signup-addr:A`, A an address
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key templates under one namespace; tests give each run its own namespace."""

    ns: str = "lumen"

    def user(self, user: str) -> str:
        return f"{self.ns}:user:{{{user}}}"

    def queue(self, user: str) -> str:
        return f"{self.ns}:queue:{{{user}}}"

    def processing(self, user: str) -> str:
        return f"{self.ns}:processing:{{{user}}}"

    @property
    def deadline(self) -> str:
        return f"{self.ns}:deadline"

    def done(self, user: str) -> str:
        return f"{self.ns}:done:{{{user}}}"

    def errors(self, user: str) -> str:
        return f"{self.ns}:errors:{{{user}}}"

    def retries(self, user: str) -> str:
        return f"{self.ns}:retries:{{{user}}}"

    def meta(self, user: str) -> str:
        return f"{self.ns}:meta:{{{user}}}"

    def caption(self, user: str) -> str:
        return f"{self.ns}:caption:{{{user}}}"

    def pdftext(self, user: str) -> str:
        return f"{self.ns}:pdftext:{{{user}}}"

    def sha(self, user: str) -> str:
        return f"{self.ns}:sha:{{{user}}}"

    def vec(self, user: str) -> str:
        return f"{self.ns}:vec:{{{user}}}"

    def vid(self, user: str) -> str:
        return f"{self.ns}:vid:{{{user}}}"

    def vitem(self, user: str) -> str:
        return f"{self.ns}:vitem:{{{user}}}"

    def vseq(self, user: str) -> str:
        return f"{self.ns}:vseq:{{{user}}}"

    def vinfo(self, user: str) -> str:
        return f"{self.ns}:vinfo:{{{user}}}"

    def usage(self, user: str) -> str:
        return f"{self.ns}:usage:{{{user}}}"

    def reply(self, user: str, token: str) -> str:
        """The remembered answer of one script call, so a resent call gets the same answer."""
        return f"{self.ns}:reply:{{{user}}}:{token}"

    @property
    def active(self) -> str:
        return f"{self.ns}:active"

    @property
    def events(self) -> str:
        return f"{self.ns}:events"

    @property
    def heartbeat(self) -> str:
        return f"{self.ns}:heartbeat"

    def user_keys(self, user: str) -> list[str]:
        """Every per-user key that `reset` clears (not the account itself)."""
        return [
            self.queue(user),
            self.processing(user),
            self.done(user),
            self.errors(user),
            self.retries(user),
            self.meta(user),
            self.caption(user),
            self.pdftext(user),
            self.sha(user),
            self.vec(user),
            self.vid(user),
            self.vitem(user),
            self.vinfo(user),
            self.usage(user),
        ]

    def throttle(self, subject: str) -> str:
        """An attempt counter with a TTL; `subject` is e.g. `login-addr:{a}`, `signup-addr:{a}`."""
        return f"{self.ns}:throttle:{subject}"
