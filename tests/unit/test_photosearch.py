"""Text search over photos: CLIP similarity and the words OCR read, fused into one ranking."""

from __future__ import annotations

from lumen.photosearch import fuse_photos, matching_words, relevance, words_index

# Raw CLIP cosines of a query against six photos (a dog photo looks most like "red car").
CLIP = {"car.jpg": 0.31, "truck.jpg": 0.29, "dog.jpg": 0.22, "sign.jpg": 0.18, "poster.jpg": 0.2}
WORDS = {
    "sign.jpg": "PARKING 5 EUR Zone B",
    "poster.jpg": "RED HOT SUMMER SALE",
    "receipt.jpg": "\n".join(f"ITEM {i:02d} coffee {i}.50" for i in range(12)),
}


def _relevance(query: str) -> dict[str, float]:
    return relevance(words_index(WORDS), query)


def test_a_photo_holding_every_word_of_the_query_comes_first() -> None:
    hits = fuse_photos(CLIP, _relevance("parking 5 eur"), k=3)
    assert [h.item for h in hits][:2] == ["sign.jpg", "car.jpg"]
    assert hits[0].matched == ("text",)  # CLIP alone ranked it 5th
    assert hits[1].matched == ("image",)
    assert hits[0].similarity == CLIP["sign.jpg"]  # similarity stays the raw cosine


def test_one_stray_word_does_not_outrank_what_looks_like_the_query() -> None:
    hits = fuse_photos(CLIP, _relevance("red car"), k=5)
    order = [h.item for h in hits]
    assert order[:2] == ["car.jpg", "truck.jpg"]
    poster = hits[order.index("poster.jpg")]
    image_only = 0.4 * (CLIP["poster.jpg"] - 0.18) / (0.31 - 0.18)  # its min-max CLIP share
    assert poster.matched == ("image", "text") and poster.score > image_only  # a small lift


def test_a_photo_both_sides_like_says_so() -> None:
    clip = {**CLIP, "sign.jpg": 0.4}
    hits = fuse_photos(clip, _relevance("parking"), k=2)
    assert (hits[0].item, hits[0].matched) == ("sign.jpg", ("image", "text"))


def test_a_query_no_photo_holds_keeps_the_clip_order_exactly() -> None:
    assert _relevance("a dog on the beach") == {}
    hits = fuse_photos(CLIP, {}, k=5)
    assert [h.item for h in hits] == sorted(CLIP, key=lambda i: -CLIP[i])
    assert all(h.matched == ("image",) for h in hits)


def test_a_receipt_is_not_demoted_as_a_list_page() -> None:
    # its lines end in numbers, like a table of contents; photos have no page structure
    relevance = _relevance("coffee")
    assert relevance["receipt.jpg"] > 0.5


def test_the_matching_words_are_given_as_ocr_read_them_once_each() -> None:
    text = "PARKING 5 EUR per hour. Parked cars: PARKING only"
    assert matching_words(text, "parking 5 eur") == ("PARKING", "5", "EUR", "Parked")
    assert matching_words(text, "the") == ()  # stopwords match nothing
    assert matching_words("", "parking") == ()
