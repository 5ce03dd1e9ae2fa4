"""OCR failures never fail a photo: past its time limit, a photo is still embedded, committed
and found, without words and with a note. Real redis-server, the tiny trained model, real
Tesseract, the Embedder's core and the dispatcher's commit; no Ray.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from lumen.config import QueueSettings, Settings
from lumen.dispatch import CommitAnswer, CommitRequest, DispatchCore
from lumen.ocr import OCR_TIMEOUT_NOTE
from lumen.spaces import SpaceRegistry
from lumen.storage import Stores
from lumen.uploads import UploadService
from lumen.vectors import CommitRow, decode_vectors
from lumen.worker import EmbedderCore, EmbedResult
from tests.conftest import RedisServer
from tests.support.dispatch_fakes import FakeEvents, FakeMetrics
from tests.support.hostile import make_zip
from tests.support.photos import jpeg, plain_photo, receipt, sign
from tests.support.tiny_clip import default_cache_dir, ensure_tiny_clip

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr not installed (make test installs it)"
)
USER = "reader"


class StoreCommit:
    """The IndexShard's commit, without Ray: Redis first, then the FAISS mirror."""

    def __init__(self, stores: Stores, registry: SpaceRegistry) -> None:
        self.stores, self.registry = stores, registry

    async def commit(
        self, user: str, model_id: str, dim: int, rows: list[CommitRow]
    ) -> dict[str, int]:
        committed = self.stores.vectors.commit(user, model_id, dim, rows)
        vectors = {row[0]: decode_vectors([row[1]], dim)[0] for row in rows}
        read = {row[0] for row in rows if row[3:4] != ("",)}
        self.registry.add(user, committed, vectors, words=read)
        return committed

    async def commit_many(self, requests: list[CommitRequest]) -> list[CommitAnswer]:
        return [await self.commit(user, m, dim, rows) for user, m, dim, rows, _ in requests]


def _embed(core: EmbedderCore, items: list[str]) -> list[EmbedResult]:
    """What the Embedder does per chunk: decode and pre-check, OCR the likely ones, embed."""
    looked = [core.decode_and_look(USER, item) for item in items]
    words = [
        core.read_words(USER, item, time.monotonic()) if look else None
        for item, (_, look) in zip(items, looked, strict=True)
    ]
    vectors, captions = core.embed_checked([tensor for tensor, _ in looked])
    return [
        core.result(USER, item, vec, cap, w)
        for item, vec, cap, w in zip(items, vectors, captions, words, strict=True)
    ]


@pytest.mark.parametrize("timeout_s", [10.0, 0.001], ids=["in-time", "past-the-limit"])
def test_ocr_past_its_time_limit_never_fails_the_photo(
    redis_server: RedisServer, tmp_path: Path, timeout_s: float
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        redis={"url": redis_server.url, "namespace": f"o{uuid.uuid4().hex[:8]}"},
        model=ensure_tiny_clip(default_cache_dir()).model_settings(),
        ocr={"timeout_s": timeout_s},
    )
    stores = Stores(settings)
    photos = {"sign.jpg": jpeg(sign("PARKING 5 EUR")), "till.jpg": jpeg(receipt())}
    photos["plain.jpg"] = jpeg(plain_photo(5, size=(800, 600)))
    archive = tmp_path / "in.zip"
    archive.write_bytes(make_zip(photos))
    queued = UploadService(settings, stores.queue).ingest_zip(USER, archive).queued
    claimed = stores.queue.claim(USER, 3, "w1", timeout_s=60)
    core = EmbedderCore(settings, "w1", threads=1)
    registry = SpaceRegistry(settings, stores)
    dispatch = DispatchCore(
        QueueSettings(), stores.queue, FakeEvents(), None, StoreCommit(stores, registry),  # type: ignore[arg-type]
        FakeMetrics(),
    )  # fmt: skip

    asyncio.run(dispatch.commit(USER, _embed(core, claimed)))

    assert sorted(stores.queue.done(USER)) == sorted(queued)  # every photo, failed OCR or not
    plain, sign_item, till = sorted(queued)
    words, notes = stores.vectors.ocr_words(USER), stores.vectors.ocr_notes(USER)
    if timeout_s < 1:
        assert words == {} and notes == {sign_item: OCR_TIMEOUT_NOTE, till: OCR_TIMEOUT_NOTE}
    else:
        assert words[sign_item] == "PARKING 5 EUR" and "coffee" in words[till]
        assert notes == {}
    assert plain not in words and plain not in notes  # no text: never went to Tesseract
    query = core.embed_texts(["parking 5 eur"])[0].astype(np.float32)
    hits = registry.search(USER, query, 3, text="parking 5 eur")
    assert sorted(h.item for h in hits) == sorted(queued)  # all searchable
    assert (hits[0].item == sign_item) == (timeout_s > 1)
