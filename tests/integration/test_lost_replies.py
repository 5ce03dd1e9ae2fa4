"""Lost replies end to end: an upload and a commit whose Redis replies are lost after the
scripts ran still leave every file kept, every item once, and every done item found by an
exact-copy search. Real redis-server (through a reply-losing proxy), the real upload
service, the tiny trained model and the shard's FAISS mirror; no Ray.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lumen.config import Settings
from lumen.paths import resolve_item
from lumen.spaces import SpaceRegistry
from lumen.storage import Stores
from lumen.uploads import UploadService
from lumen.vectors import decode_vectors
from lumen.worker import EmbedderCore
from tests.conftest import RedisServer
from tests.support.hostile import make_jpeg, make_zip
from tests.support.lossy_proxy import LossyProxy
from tests.support.tiny_clip import default_cache_dir, ensure_tiny_clip

USER = "lossy"


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[LossyProxy]:
    p = LossyProxy(redis_server.port)
    yield p
    p.close()


@pytest.fixture
def settings(proxy: LossyProxy, tmp_path: Path) -> Settings:
    tiny = ensure_tiny_clip(default_cache_dir())
    return Settings(
        data_dir=tmp_path,
        redis={"url": proxy.url, "namespace": f"l{uuid.uuid4().hex[:8]}"},
        model=tiny.model_settings(),
    )


def test_an_upload_and_a_commit_that_lose_their_replies_lose_nothing(
    settings: Settings, proxy: LossyProxy
) -> None:
    stores = Stores(settings)
    stores.ping()
    images = {
        f"c{i}.jpg": make_jpeg((i * 30 % 256, 90, 255 - i * 20), size=(80, 80)) for i in range(8)
    }
    archive = settings.data_dir / "in.zip"
    archive.write_bytes(make_zip(images))

    proxy.lose_next_reply(b"EVALSHA")  # the enqueue script runs; its answer is lost
    outcome = UploadService(settings, stores.queue).ingest_zip(USER, archive)
    assert proxy.lost == 1
    assert len(outcome.queued) == 8 and outcome.duplicates == {}
    assert all(resolve_item(settings.data_dir, USER, i).is_file() for i in outcome.queued)
    assert stores.queue.status(USER, 100).queued_items == outcome.queued  # each once

    claimed = stores.queue.claim(USER, 8, "w1", timeout_s=60)
    core = EmbedderCore(settings, "w1", threads=1)
    vectors, captions = core.embed_checked([core.decode(USER, item) for item in claimed])
    rows = [
        (item, vec.astype("<f4").tobytes(), cap)
        for item, vec, cap in zip(claimed, vectors, captions, strict=True)
    ]
    registry = SpaceRegistry(settings, stores)
    proxy.lose_next_reply(b"EVALSHA")  # the commit script runs; its answer is lost
    committed = stores.vectors.commit(USER, core.model_id, core.dim, rows)
    assert proxy.lost == 2
    assert sorted(committed) == sorted(claimed)  # the resend names every item
    registry.add(USER, committed, {i: decode_vectors([b], core.dim)[0] for i, b, _ in rows})

    assert sorted(stores.queue.done(USER)) == sorted(claimed)
    assert stores.vectors.count(USER) == 8  # nothing duplicated
    for item, vec in zip(claimed, vectors, strict=True):
        [top] = registry.search(USER, np.asarray(vec, dtype=np.float32), 1)
        assert top.item == item and top.similarity > 0.999
