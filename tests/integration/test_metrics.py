"""Our Prometheus metrics are visible on the node's metrics endpoint."""

from __future__ import annotations

import httpx
import ray

from tests.conftest import Service
from tests.support.hostile import make_jpeg, make_zip
from tests.support.http import search, upload_zip, wait_settled
from tests.support.waiting import wait_until

EXPECTED = (
    "lumen_items_done_total",
    "lumen_queue_depth",
    "lumen_embed_batch_size",
    "lumen_embed_batch_seconds",
    "lumen_search_seconds",
    "lumen_http_errors_total",
)


def test_service_metrics_appear_on_the_metrics_endpoint(service: Service) -> None:
    _, h = service.new_user("metrics")
    upload_zip(service, h, make_zip({f"m{i}.jpg": make_jpeg((i * 20, 9, 9)) for i in range(5)}))
    wait_settled(service, h, 5)
    search(service, h, query="a red circle")
    search(service, h, query="x", top_k="0")  # an error response
    port = ray.nodes()[0]["MetricsExportPort"]

    def all_exported() -> bool:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return all(m in text for m in EXPECTED)

    wait_until(all_exported, 90, f"{', '.join(EXPECTED)} on the metrics endpoint", poll_s=2)
