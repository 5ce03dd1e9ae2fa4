"""End to end: upload, embed, then search by text and by image with a model that learned."""

from __future__ import annotations

import io
import shutil

import pytest

from lumen.storage import Stores
from tests.conftest import Service
from tests.support.hostile import make_zip
from tests.support.http import search, upload_zip, wait_settled
from tests.support.photos import jpeg, plain_photo, sign
from tests.support.tiny_clip import COLORS, SHAPES, draw_shape


def _png(color: str, shape: str, seed: int = 7) -> bytes:
    buf = io.BytesIO()
    draw_shape(color, shape, size=192, seed=seed).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shapes_space(service: Service) -> tuple[str, dict[str, str], dict[str, str]]:
    """A user whose space holds one picture of each colour x shape, embedded."""
    user, h = service.new_user("shapes")
    members = {f"{c}_{s}.png": _png(c, s) for c in COLORS for s in SHAPES}
    body = upload_zip(service, h, make_zip(members)).json()
    assert len(body["queued"]) == len(members)
    wait_settled(service, h, len(members))
    names = {q.rsplit("/", 1)[1].removesuffix(".png"): q for q in body["queued"]}
    return user, h, names


def test_an_exact_copy_of_an_uploaded_image_comes_first(
    service: Service, shapes_space: tuple[str, dict[str, str], dict[str, str]]
) -> None:
    _, h, names = shapes_space
    r = search(service, h, image=_png("blue", "triangle"), top_k=3)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["filename"] == names["blue_triangle"]
    assert results[0]["similarity"] >= 0.99
    assert results[0]["similarity"] > results[1]["similarity"]
    assert set(results[0]) >= {"filename", "caption", "similarity", "image_path"}


@pytest.mark.parametrize(
    ("color", "shape"),
    [("red", "circle"), ("green", "square"), ("yellow", "triangle"), ("blue", "circle")],
)
def test_text_search_finds_the_described_shape(
    service: Service,
    shapes_space: tuple[str, dict[str, str], dict[str, str]],
    color: str,
    shape: str,
) -> None:
    _, h, names = shapes_space
    r = search(service, h, query=f"a {color} {shape}", top_k=5)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 5
    assert results[0]["filename"] == names[f"{color}_{shape}"]
    sims = [x["similarity"] for x in results]
    assert sims == sorted(sims, reverse=True)


def test_results_come_only_from_the_callers_space(
    service: Service, shapes_space: tuple[str, dict[str, str], dict[str, str]]
) -> None:
    user, _, _ = shapes_space
    other, h = service.new_user("other")
    upload_zip(service, h, make_zip({"mine.png": _png("red", "circle", seed=99)}))
    wait_settled(service, h, 1)
    results = search(service, h, query="a red circle", top_k=50).json()["results"]
    assert [x["filename"] for x in results] == [f"uploads/{other}/mine.png"]
    assert all(user not in x["filename"] for x in results)


def test_captions_name_what_the_zero_shot_labels_see(
    service: Service, shapes_space: tuple[str, dict[str, str], dict[str, str]]
) -> None:
    _, h, _ = shapes_space
    results = search(service, h, query="a red circle", top_k=1).json()["results"]
    caption = results[0]["caption"]
    assert isinstance(caption, str) and caption.count(",") == 2  # three labels


def test_combined_text_and_image_query_works(
    service: Service, shapes_space: tuple[str, dict[str, str], dict[str, str]]
) -> None:
    _, h, names = shapes_space
    r = search(service, h, query="a green square", image=_png("green", "square"), top_k=1)
    assert r.status_code == 200 and r.json()["results"][0]["filename"] == names["green_square"]


@pytest.mark.parametrize("top_k", ["0", "-1", "101", "abc", "1.5"])
def test_bad_top_k_is_a_400_that_says_the_range(service: Service, top_k: str) -> None:
    _, h = service.new_user()
    r = search(service, h, query="a dog", top_k=top_k)
    assert r.status_code == 400 and "top_k" in r.json()["detail"]


def test_search_without_query_or_image_and_with_bad_inputs_is_a_4xx(service: Service) -> None:
    _, h = service.new_user()
    assert search(service, h).status_code == 400
    assert search(service, h, query="x" * 5000).status_code == 413
    r = search(service, h, image=b"this is not an image")
    assert r.status_code == 400, r.text
    huge = b"\x89PNG" + bytes(service.settings.limits.max_search_image_bytes)
    r = search(service, h, image=huge)
    assert r.status_code == 413 and r.json()["limit"] == "max_search_image_bytes"


def test_search_on_an_empty_space_returns_no_results(service: Service) -> None:
    _, h = service.new_user()
    r = search(service, h, query="anything")
    assert r.status_code == 200 and r.json() == {"results": []}


needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract-ocr not installed (make test installs it)"
)


@needs_tesseract
def test_a_photo_showing_words_is_found_first_by_a_text_query_for_them(service: Service) -> None:
    user, h = service.new_user("words")
    members = {
        "parking.jpg": jpeg(sign("PARKING 5 EUR")),
        "street.jpg": jpeg(plain_photo(3, size=(800, 600))),
        "field.jpg": jpeg(plain_photo(4, size=(800, 600))),
        **{f"{c}_{s}.png": _png(c, s) for c in COLORS for s in SHAPES},
    }
    body = upload_zip(service, h, make_zip(members)).json()
    assert len(body["queued"]) == len(members)
    done = wait_settled(service, h, len(members))
    assert done["errors"] == {}
    sign_item = f"uploads/{user}/parking.jpg"

    r = search(service, h, query="parking 5 eur", top_k=5)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["filename"] == sign_item
    assert "text" in results[0]["matched"]
    assert results[0]["matched_words"] == ["PARKING", "5", "EUR"]
    assert all(x["matched"] == ["image"] and x["matched_words"] == [] for x in results[1:])

    # the words are stored with the photo's vector; photos without text have none, no note
    vectors = Stores(service.settings).vectors
    assert vectors.ocr_words(user) == {sign_item: "PARKING 5 EUR"}
    assert vectors.ocr_notes(user) == {}


@needs_tesseract
def test_a_query_no_photo_holds_keeps_the_image_ranking(service: Service) -> None:
    _, h = service.new_user("nowords")
    members = {"parking.jpg": jpeg(sign("PARKING 5 EUR")), "red.png": _png("red", "circle")}
    upload_zip(service, h, make_zip(members))
    wait_settled(service, h, len(members))
    results = search(service, h, query="a red circle", top_k=2).json()["results"]
    assert results[0]["filename"].endswith("/red.png")
    assert [x["matched"] for x in results] == [["image"], ["image"]]
    sims = [x["similarity"] for x in results]
    assert sims == sorted(sims, reverse=True)
