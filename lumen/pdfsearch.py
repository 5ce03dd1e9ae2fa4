"""Hybrid retrieval over a user's PDF pages: BM25 on page text fused with CLIP similarity.

CLIP alone is weak on text-heavy pages (their embeddings crowd together) and BM25 alone is
blind to scanned pages and figures, so `fuse` combines the two:

    fused = (1 - TEXT_WEIGHT) * minmax(clip cosine) + TEXT_WEIGHT * text relevance

Text relevance (`BM25Index.relevance`) is the BM25 score divided by the query's reference
score (what an average-length page holding each query word once would get; words found on
no page count at full idf), capped at 1. Unlike min-max or rank fusion it keeps *how much*
of the query a page matches, so a stray word shared with a visual query ("copyright" in
"signed copyright form") cannot outvote CLIP. In the evaluation in
`tests/unit/test_pdfsearch.py` (hit@1, text questions / visual queries on scanned pages,
simulated CLIP) it scored 0.95 / 0.83, against 0.59 / 0.23 for reciprocal rank fusion
(k=60), whose CLIP noise on text pages reorders BM25's top pages, and 0.97 / 0.23 for a
max-normalised weighted sum. TEXT_WEIGHT 0.5 gave 0.89 / 0.88, 0.7 gave 0.97 / 0.64.

- A page with no text (scanned) ranks through CLIP alone; a query that matches no text
  leaves the CLIP order untouched.
- Each hit keeps its raw CLIP cosine, which is what the API reports as `similarity`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

K1 = 1.5
B = 0.75
TEXT_WEIGHT = 0.6  # chosen by the evaluation in tests/unit/test_pdfsearch.py

_WORD = re.compile(r"\w+")
_STOPWORD_TEXT = """
    a an and are as at be been but by can do does for from had has have how i if in into is
    it its me my no not of on or our so than that the their them then there these they this
    to was we were what when where which who whom why will with would you your
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def tokenize(text: str) -> list[str]:
    """Lowercased unicode words, stopwords dropped, plurals folded to their singular."""
    return [_stem(word) for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


def _stem(word: str) -> str:
    """Light, predictable stemming: only the common plural endings."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class BM25Index:
    """Okapi BM25 over page texts keyed by page item; pages without text never match."""

    def __init__(self, pages: Mapping[str, str], *, k1: float = K1, b: float = B) -> None:
        self._k1 = k1
        self._b = b
        self._postings: dict[str, list[tuple[str, int]]] = {}
        self._lengths: dict[str, int] = {}
        for item, text in pages.items():
            counts = Counter(tokenize(text or ""))
            self._lengths[item] = sum(counts.values())
            for term, count in counts.items():
                self._postings.setdefault(term, []).append((item, count))
        texted = [n for n in self._lengths.values() if n > 0]
        # Average over pages that have text, so scanned pages do not shorten the norm.
        self._avg_length = sum(texted) / len(texted) if texted else 0.0
        self._idf = {term: self._idf_of(len(posts)) for term, posts in self._postings.items()}

    def __len__(self) -> int:
        return len(self._lengths)

    def _idf_of(self, doc_freq: int) -> float:
        # The "+1" form (Lucene's) keeps idf positive for terms on most pages.
        n = len(self._lengths)
        return math.log(1.0 + (n - doc_freq + 0.5) / (doc_freq + 0.5))

    def scores(self, query: str) -> dict[str, float]:
        """BM25 score of every page matching at least one query term (others are absent)."""
        totals: dict[str, float] = {}
        for term in dict.fromkeys(tokenize(query)):
            idf = self._idf.get(term)
            if idf is None:
                continue
            for item, tf in self._postings[term]:
                norm = 1.0 - self._b + self._b * self._lengths[item] / self._avg_length
                gain = idf * tf * (self._k1 + 1.0) / (tf + self._k1 * norm)
                totals[item] = totals.get(item, 0.0) + gain
        return totals

    def reference_score(self, query: str) -> float:
        """BM25 of an average-length page holding each query word once: the sum of idfs."""
        unseen = self._idf_of(0)
        return sum(self._idf.get(term, unseen) for term in dict.fromkeys(tokenize(query)))

    def relevance(self, query: str) -> dict[str, float]:
        """BM25 scores over `reference_score`, capped at 1: how much of the query a page matches."""
        reference = self.reference_score(query)
        if reference <= 0:
            return {}
        return {item: min(1.0, s / reference) for item, s in self.scores(query).items()}


@dataclass(frozen=True)
class FusedHit:
    """One page in the fused ranking; `clip_similarity` is the raw cosine (None if unknown)."""

    item: str
    score: float
    clip_similarity: float | None
    text_score: float


def fuse(
    clip_scores: Mapping[str, float],
    text_scores: Mapping[str, float],
    *,
    k: int,
    text_weight: float = TEXT_WEIGHT,
) -> list[FusedHit]:
    """The `k` best pages by weighted CLIP + text fusion.

    `clip_scores` are raw cosine similarities (min-max normalised here); `text_scores` are
    relevances in [0, 1] from `BM25Index.relevance` (clamped, absent means no match).
    """
    clip_norm = _min_max(clip_scores)
    fused = {
        item: (1.0 - text_weight) * clip_norm.get(item, 0.0)
        + text_weight * min(max(text_scores.get(item, 0.0), 0.0), 1.0)
        for item in clip_scores.keys() | text_scores.keys()
    }
    return _top(fused, clip_scores, text_scores, k)


def _min_max(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {item: (s - low) / span if span > 0 else 1.0 for item, s in scores.items()}


def _top(
    fused: Mapping[str, float],
    clip_scores: Mapping[str, float],
    text_scores: Mapping[str, float],
    k: int,
) -> list[FusedHit]:
    # Ties (equal fused score) go to the higher CLIP similarity, then the item name.
    order = sorted(fused, key=lambda item: (-fused[item], -clip_scores.get(item, -math.inf), item))
    return [
        FusedHit(
            item=item,
            score=fused[item],
            clip_similarity=clip_scores.get(item),
            text_score=text_scores.get(item, 0.0),
        )
        for item in order[: max(k, 0)]
    ]
