"""`/search` by text: CLIP similarity fused with the words OCR read in photos, one ranking.

The image side ranks the user's items by CLIP cosine; the text side scores the words OCR
read in photos (lumen.ocr) with the same BM25 the PDF pages use (`BM25Index` without page
structure): `relevance` is the share of the query's idf a photo's words hold, capped at 1.

    fused = (1 - TEXT_WEIGHT) * minmax(clip cosine) + TEXT_WEIGHT * relevance ** 2

over the image side's best `CANDIDATES` and every photo whose words match. Why this and not
reciprocal rank fusion: RRF gives the best text match the same lift whether it holds the
whole query or one stray word of it, and a photo's OCR often holds stray words (a poster
saying "red" is not the answer to "red car"). Squaring the relevance keeps a full match
(1.0, worth 0.6) above any photo the words miss (at most 0.4), while a photo holding half
the query's weight earns 0.15 and needs to look like the query too. The weights are
round values, as in lumen/pdfsearch.py; tests/unit/test_photosearch.py holds them to
these cases. A query whose words no photo holds keeps the CLIP order exactly.

Each hit says why it is there: `"image"` when it is among the image side's best `k`,
`"text"` when its words match the query (with those words as OCR read them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from lumen.pdfsearch import BM25Index, fuse, tokenize

TEXT_WEIGHT = 0.6
CANDIDATES = 100  # the image side's depth when words match too
MAX_MATCHED_WORDS = 10
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class PhotoHit:
    """One item of the fused ranking: raw CLIP cosine, fused score, why it matched."""

    item: str
    similarity: float
    score: float
    matched: tuple[str, ...]


def words_index(words: Mapping[str, str]) -> BM25Index:
    """BM25 over photos' OCR words (item -> words)."""
    return BM25Index(dict(words), page_structure=False)


def relevance(index: BM25Index, query: str) -> dict[str, float]:
    """item -> how much of the query a photo's words hold, 0..1 (absent: none).

    The share of the query's idf (`reference_score`) its BM25 score reaches, capped at 1:
    `BM25Index.relevance`, which restores the (1 + k1) factor bm25s's Lucene BM25 leaves
    out, so a photo that shows each query word once is a full match.
    """
    return index.relevance(query)


def fuse_photos(
    clip: Mapping[str, float], relevance: Mapping[str, float], k: int
) -> list[PhotoHit]:
    """The `k` best items by CLIP cosine (`clip`, every candidate) fused with the text
    relevance of photos whose words match (`relevance`, 0..1; absent: no match)."""
    image_top = set(sorted(clip, key=lambda item: (-clip[item], item))[:k])
    text = {item: min(r, 1.0) ** 2 for item, r in relevance.items() if r > 0 and item in clip}
    fused = fuse(clip, text, k=k, text_weight=TEXT_WEIGHT, tiebreak=relevance)

    def why(item: str) -> tuple[str, ...]:
        return (("image",) if item in image_top else ()) + (("text",) if item in text else ())

    return [PhotoHit(h.item, float(clip[h.item]), h.score, why(h.item)) for h in fused]


def matching_words(words: str, query: str, limit: int = MAX_MATCHED_WORDS) -> tuple[str, ...]:
    """The words of a photo (as OCR read them) that match the query's words (same stem),
    each once, in the photo's order."""
    wanted = set(tokenize(query))
    out: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(words):
        key = word.lower()
        if key in seen:
            continue
        seen.add(key)
        if set(tokenize(key)) & wanted:
            out.append(word)
            if len(out) >= limit:
                break
    return tuple(out)
