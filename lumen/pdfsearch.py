"""Hybrid retrieval over a user's PDF pages: BM25 on page text fused with CLIP similarity.

CLIP alone is weak on text-heavy pages (their embeddings crowd together) and BM25 alone is
blind to figures, so `fuse` combines the two:

    fused = (1 - TEXT_WEIGHT) * minmax(clip cosine) + TEXT_WEIGHT * text relevance

Text relevance (`BM25Index.relevance`) is the page's text score, times (1 + k1) (the factor
bm25s's Lucene scoring leaves out), over the query's reference score (what an average-length
page holding each query word once gets; words found on no page count at full idf), capped
at 1; for pages `rank_pages` divides by the best page's instead when that is above 1
(`page_relevance`). Unlike min-max or rank fusion it keeps
*how much* of the query a page matches, so a stray word shared with a visual query
("copyright" in "signed copyright form") cannot outvote CLIP. In the evaluation in
`tests/unit/test_pdfsearch.py` (hit@1, text questions / visual queries on scanned pages,
simulated CLIP) it scores 0.97 / 0.81 (0.95 / 0.83 before the (1 + k1) factor), against
0.62 / 0.24 for reciprocal rank fusion (k=60) and 0.97 / 0.24 for a max-normalised weighted
sum. TEXT_WEIGHT 0.5 gave 0.89 / 0.88, 0.7 gave 0.97 / 0.64 (before the factor).

The text score of a page (issue 16; figures in docs/retrieval.md) is

    body BM25 + HEADING_WEIGHT * heading BM25 + LEAD_IN_WEIGHT * lead-in BM25
        + proximity bonus, then * LIST_PAGE_FACTOR on table-of-contents and index pages

- Words: lowercased unicode words, stopwords dropped, Snowball (Porter2) English stems
  through PyStemmer; BM25 (Lucene variant) through `bm25s`.
- Headings: text set larger or bold than the document's body text (PyMuPDF span sizes and
  flags, found by the render child), stored with the page.
- Lead-in: the last `LEAD_IN_WORDS` words of the page before (same document), so an answer
  that starts at the foot of one page and continues on the next is found on the next too.
- Proximity: query words that occur close together on the page (within `PROXIMITY_WINDOW`
  words, in any order) earn up to `PROXIMITY_WEIGHT` of the reference score.
- List pages (tables of contents, indexes, lists of figures) are recognised by structure:
  many lines ending in a page number, or dotted leaders. They mention every topic and
  answer none, so they are demoted.
- A page with no text (scanned, and OCR found nothing) ranks through CLIP alone; a query
  that matches no text leaves the CLIP order untouched.
- Each hit keeps its raw CLIP cosine, which is what the API reports as `similarity`.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

K1 = 1.5
B = 0.75
TEXT_WEIGHT = 0.6  # chosen by the evaluation in tests/unit/test_pdfsearch.py
HEADING_WEIGHT = 0.6
LEAD_IN_WEIGHT = 0.3
LEAD_IN_WORDS = 40
SECTION_WEIGHT = 0.3
SECTION_LOOKBACK = 10  # pages searched back for the heading a page sits under
PROXIMITY_WEIGHT = 0.25
PROXIMITY_WINDOW = 8
LIST_PAGE_FACTOR = 0.35
_PROXIMITY_CANDIDATES = 50  # pages (best by BM25) that get the proximity bonus computed

# A word, or a run of operator characters ("++", "+=", "->", "!="): manuals are asked
# about operators ("why is there no i++"), which a word tokenizer drops.
_TOKEN = re.compile(r"\w+|[-+*/=<>!&|^%~:]{2,3}")
_OPERATOR = re.compile(r"[-+*/=<>!&|^%~:]+")
_BORING_OPERATORS = frozenset({"--", "---", "::", ":::"})  # dashes and rules in prose
# A word broken across lines by a hyphen ("direc-\ntory"): typeset manuals do this often.
_LINE_HYPHEN = re.compile(r"(?<=[a-z])-\s*\n\s*(?=[a-z])")
# British spellings folded onto American ones, on both the page and the query side, so
# "colour" meets "color" and "initialise" meets "initialize" (Snowball stems neither).
_SPELLING = (
    (re.compile(r"^(\w{3,})our(s|ed|ing|ful|less)?$"), r"\1or\2"),  # colour, behaviour
    (re.compile(r"^(\w{3,})is(e|es|ed|ing|ation|ations|er|ers)$"), r"\1iz\2"),  # initialise
    (re.compile(r"^(\w{2,})ys(e|es|ed|ing)$"), r"\1yz\2"),  # analyse
    (re.compile(r"^(cent|met|lit|fib|theat)re(s|d)?$"), r"\1er\2"),  # centre, metre
    (re.compile(r"^grey(s|ed|ish)?$"), r"gray\1"),
)
# Question phrasings folded onto the words a manual uses for the same thing.
_QUESTION_PHRASES = (
    (re.compile(r"\bhow\s+many\b"), "number"),
    (re.compile(r"\bhow\s+much\b"), "amount"),
)
_STOPWORD_TEXT = """
    a an and are as at be been but by can could do does for from had has have how i if in
    into is it its me my no not of on or our should so than that the their them then there
    these they this to was we were what when where which who whom why will with would you
    your get use using make want need way
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split()) | frozenset(STOPWORDS_EN)
_STEMMER = Stemmer.Stemmer("english")
# A line that ends in a page number or a range/list of them: "Maps as Lists . . . 7",
# "parfor, 12, 13"; a number glued to a word ("v4", a figure label) does not count.
_LIST_LINE = re.compile(r"(?:^|[\s.])\d+(?:\s*[,–-]\s*\d+)*\s*$")
# ... but not a line of code, a formula or program output ending in a value: "r_2: ... = 0"
_VALUE_LINE = re.compile(r"[=<>+*/^(\[]\s*-?\d[\d\s,.]*$")
_HAS_LETTER = re.compile(r"[^\W\d_]")  # a contents or index line names something
_DOTTED_LEADER = re.compile(r"(?:\.\s?){4,}")
_PAGE_ITEM = re.compile(r"^(?P<stem>.*_page_)(?P<number>\d+)(?P<ext>\.\w+)$")


def normalize(text: str) -> str:
    """Text as the tokenizer reads it: NFKC (typeset ligatures such as "ﬁ" become "fi"),
    lowercased, words broken by a hyphen at a line end joined again."""
    return _LINE_HYPHEN.sub("", unicodedata.normalize("NFKC", text).lower())


@functools.lru_cache(maxsize=65536)
def _term(word: str) -> str:
    """The index term of one lowercased word ("" for a stopword): spelling folded, stemmed."""
    if len(word) >= 4 and word.isalpha():
        for pattern, replacement in _SPELLING:
            folded, n = pattern.subn(replacement, word)
            if n:
                word = folded
                break
    if word in STOPWORDS or word in _BORING_OPERATORS:
        return ""
    return str(_STEMMER.stemWord(word))


def tokenize(text: str) -> list[str]:
    """Normalised words and operators, stopwords dropped, Snowball English stems."""
    return [t for t in map(_term, _TOKEN.findall(normalize(text))) if t]


def tokenize_query(query: str) -> list[str]:
    """`tokenize` after question phrasings are folded ("how many" asks for a number)."""
    text = normalize(query)
    for pattern, replacement in _QUESTION_PHRASES:
        text = pattern.sub(replacement, text)
    return tokenize(text)


@dataclass(frozen=True)
class PageText:
    """What the text side knows about a page: its text, the headings on it and the heading
    path it sits under (`section`, from the PDF's outline; "" when the PDF has none)."""

    text: str
    headings: str = ""
    section: str = ""


def is_list_page(text: str) -> bool:
    """A table of contents, index or list of figures: most lines end in page numbers."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < 8:
        return False
    numbered = sum(
        1
        for ln in lines
        if _LIST_LINE.search(ln) and _HAS_LETTER.search(ln) and not _VALUE_LINE.search(ln)
    )
    leaders = len(_DOTTED_LEADER.findall(text))
    return leaders >= 8 or numbered >= max(8, 0.45 * len(lines))


def previous_page_item(item: str) -> str | None:
    """The item of the page before, from `{stem}_page_NNN.jpg` names (None for page 1)."""
    match = _PAGE_ITEM.match(item)
    if match is None:
        return None
    number = int(match["number"])
    if number <= 1:
        return None
    width = len(match["number"])
    return f"{match['stem']}{number - 1:0{width}d}{match['ext']}"


class _Field:
    """One BM25 field (body, headings, lead-in) over the same pages, via bm25s."""

    def __init__(self, docs: list[list[str]], k1: float, b: float) -> None:
        self.empty = not any(docs)
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        if not self.empty:
            # bm25s needs one token per document; an empty page gets a token no query has
            self._bm25.index([d or ["\x00"] for d in docs], show_progress=False)

    def scores(self, terms: list[str]) -> np.ndarray | None:
        if self.empty:
            return None
        known = [t for t in terms if t in self._bm25.vocab_dict]
        if not known:
            return None
        return np.asarray(self._bm25.get_scores(known), dtype=np.float64)


class BM25Index:
    """Page texts keyed by page item, scored by fielded BM25 with the adjustments above.

    `pages` maps an item to its text, or to a `PageText` with headings. Pages without text
    never match. `page_structure=False` (photos' OCR words, lumen.photosearch) drops what
    only pages have: the lead-in and the section inherited from the page before, and
    list-page demotion (a receipt's lines end in numbers too).
    """

    def __init__(
        self,
        pages: Mapping[str, str | PageText],
        *,
        k1: float = K1,
        b: float = B,
        page_structure: bool = True,
    ) -> None:
        self._items = list(pages)
        self._k1 = k1
        page_texts = [_page_text(pages[i]) for i in self._items]
        bodies = [tokenize(p.text or "") for p in page_texts]
        # Word positions for the proximity bonus, kept compact: term ids, not strings.
        self._term_ids: dict[str, int] = {}
        self._tokens = [
            np.array([self._term_ids.setdefault(t, len(self._term_ids)) for t in b], np.int32)
            for b in bodies
        ]
        self._lengths = np.array([len(t) for t in bodies], dtype=np.float64)
        position = {item: at for at, item in enumerate(self._items)}
        lead_ins: list[list[str]] = []
        for item in self._items:
            before = previous_page_item(item) if page_structure else None
            at = position.get(before) if before is not None else None
            lead_ins.append(bodies[at][-LEAD_IN_WORDS:] if at is not None else [])
        self._body = _Field(bodies, k1, b)
        self._headings = _Field([tokenize(p.headings) for p in page_texts], k1, b)
        self._lead_in = _Field(lead_ins, k1, b)
        sections = (
            _sections(self._items, page_texts, position)
            if page_structure
            else [""] * len(self._items)
        )
        self._section = _Field([tokenize(s) for s in sections], k1, b)
        self._list_page = np.array(
            [page_structure and is_list_page(p.text or "") for p in page_texts], dtype=bool
        )
        self._has_text = self._lengths > 0
        doc_freq: dict[str, int] = {}
        for tokens in bodies:
            for term in set(tokens):
                doc_freq[term] = doc_freq.get(term, 0) + 1
        self._doc_freq = doc_freq

    def __len__(self) -> int:
        return len(self._items)

    def list_pages(self) -> set[str]:
        """Items recognised as table-of-contents, index or list pages."""
        return {item for item, flag in zip(self._items, self._list_page, strict=True) if flag}

    def _idf_of(self, doc_freq: int) -> float:
        # The "+1" form (Lucene's) keeps idf positive for terms on most pages.
        n = len(self._items)
        return math.log(1.0 + (n - doc_freq + 0.5) / (doc_freq + 0.5))

    def scores(self, query: str) -> dict[str, float]:
        """Text score of every page matching at least one query term (others are absent)."""
        terms = list(dict.fromkeys(tokenize_query(query)))
        body = self._body.scores(terms)
        if body is None or not self._items:
            return {}
        total = body.copy()
        for field, weight in (
            (self._headings, HEADING_WEIGHT),
            (self._lead_in, LEAD_IN_WEIGHT),
            (self._section, SECTION_WEIGHT),
        ):
            extra = field.scores(terms)
            if extra is not None:
                total += weight * extra
        total[~self._has_text] = 0.0
        matched = (total > 0) & self._has_text
        if len(terms) > 1:
            total += self._proximity(terms, body, matched)
        total[self._list_page] *= LIST_PAGE_FACTOR
        return {self._items[at]: float(total[at]) for at in np.flatnonzero(matched)}

    def _proximity(self, terms: list[str], body: np.ndarray, matched: np.ndarray) -> np.ndarray:
        """Up to PROXIMITY_WEIGHT * reference for pages where query words sit together."""
        bonus = np.zeros_like(body)
        candidates = np.flatnonzero(matched)
        if len(candidates) > _PROXIMITY_CANDIDATES:
            candidates = candidates[np.argsort(-body[candidates])[:_PROXIMITY_CANDIDATES]]
        idf = {t: self._idf_of(self._doc_freq.get(t, 0)) for t in terms}
        reference = sum(idf.values())
        by_id = {self._term_ids[t]: w for t, w in idf.items() if t in self._term_ids}
        ids = np.fromiter(by_id, dtype=np.int32, count=len(by_id))
        for at in candidates:
            tokens = self._tokens[at]
            positions = np.flatnonzero(np.isin(tokens, ids))
            hits = [(int(pos), int(tokens[pos])) for pos in positions]
            bonus[at] = PROXIMITY_WEIGHT * reference * _closeness(hits, by_id, reference)
        return bonus

    def reference_score(self, query: str) -> float:
        """BM25 of an average-length page holding each query word once: the sum of idfs."""
        return sum(
            self._idf_of(self._doc_freq.get(term, 0))
            for term in dict.fromkeys(tokenize_query(query))
        )

    def relevance(self, query: str) -> dict[str, float]:
        """Text scores over `reference_score`, capped at 1: how much of the query a page matches."""
        return self.relevance_of(query, self.scores(query))

    def relevance_of(
        self, query: str, scores: Mapping[str, float], *, cap: bool = True
    ) -> dict[str, float]:
        """`relevance` from scores already computed by `scores(query)` (`cap=False`: not
        capped at 1, for `rank_pages`).

        bm25s's Lucene BM25 leaves out the (k1 + 1) factor of the textbook formula, so one
        occurrence of a word in a text of average length scores idf / (1 + k1), not idf.
        Scores are scaled by (1 + k1) first: a page (or photo) holding each query word once
        is a full match, as `reference_score` assumes.
        """
        reference = self.reference_score(query)
        if reference <= 0:
            return {}
        scale = (1.0 + self._k1) / reference
        limit = 1.0 if cap else math.inf
        return {item: min(limit, s * scale) for item, s in scores.items()}


def rank_pages(
    clip_scores: Mapping[str, float], index: BM25Index, query: str, *, mode: str, k: int
) -> list[FusedHit]:
    """The `k` best pages for `query`: `fused`, or one side alone (`text` / `image`).

    Pages the text index knows but CLIP does not (not embedded yet) are left out.
    """
    raw = {i: s for i, s in index.scores(query).items() if i in clip_scores}
    text = page_relevance(index.relevance_of(query, raw, cap=False))
    weight = {"text": 1.0, "image": 0.0}.get(mode, TEXT_WEIGHT)
    return fuse(clip_scores, text, k=k, text_weight=weight, tiebreak=raw)


def page_relevance(relevance: Mapping[str, float]) -> dict[str, float]:
    """Pages' text side for fusion, from uncapped relevances: as they are while the best
    page holds at most the whole query once (1.0), else all divided by the best one's.

    Capping each page at 1 (as photos do) would make every page that repeats the query's
    words a full match, and CLIP alone would then order them: in the evaluation
    (docs/retrieval.md) that took fused hit@1 from 0.52 to 0.38. Dividing by the best keeps
    the text order among strong matches and a weak query's share of the query as it is.
    """
    top = max(relevance.values(), default=1.0)
    if top <= 1.0:
        return dict(relevance)
    return {item: r / top for item, r in relevance.items()}


def _sections(items: list[str], pages: list[PageText], position: Mapping[str, int]) -> list[str]:
    """The heading path each page sits under: its outline `section` when the PDF has one,
    else the last heading on the nearest page before it (within SECTION_LOOKBACK pages)."""
    out: list[str] = []
    for item, page in zip(items, pages, strict=True):
        if page.section:
            out.append(page.section)
            continue
        inherited = ""
        before = previous_page_item(item)
        for _ in range(SECTION_LOOKBACK):
            at = position.get(before) if before is not None else None
            if at is None:
                break
            heads = [h for h in pages[at].headings.splitlines() if h.strip()]
            if heads:
                inherited = heads[-1]
                break
            before = previous_page_item(items[at])
        out.append(inherited)
    return out


def _page_text(page: str | PageText) -> PageText:
    return page if isinstance(page, PageText) else PageText(page or "")


def _closeness(hits: list[tuple[int, int]], idf: Mapping[int, float], total: float) -> float:
    """The idf share (of `total`) of the query found in the best window of PROXIMITY_WINDOW
    words; `hits` are the (position, term id) of the page's query words, in order.

    Only windows holding at least two different query words count; 0 when none does.
    """
    if len(hits) < 2 or total <= 0:
        return 0.0
    best = 0.0
    start = 0
    counts: dict[int, int] = {}
    for pos, tok in hits:
        counts[tok] = counts.get(tok, 0) + 1
        while pos - hits[start][0] >= PROXIMITY_WINDOW:
            old = hits[start][1]
            counts[old] -= 1
            if counts[old] == 0:
                del counts[old]
            start += 1
        if len(counts) >= 2:
            best = max(best, sum(idf[t] for t in counts) / total)
    return best


def page_index(texts: Mapping[str, str], metas: Iterable[Mapping[str, Any] | None]) -> BM25Index:
    """The index over stored page texts and their metadata (`headings`, `section` when
    recorded)."""
    pages = {
        item: PageText(
            text,
            str((meta or {}).get("headings") or ""),
            str((meta or {}).get("section") or ""),
        )
        for item, meta in zip(texts, metas, strict=True)
        for text in (texts[item],)
    }
    return BM25Index(pages)


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
    tiebreak: Mapping[str, float] | None = None,
) -> list[FusedHit]:
    """The `k` best pages by weighted CLIP + text fusion.

    `clip_scores` are raw cosine similarities (min-max normalised here); `text_scores` are
    relevances in [0, 1] from `BM25Index.relevance` (clamped, absent means no match).
    Equal fused scores (pages whose relevance reached the cap, in text mode) are ordered by
    `tiebreak` (the uncapped text scores), then by CLIP similarity.
    """
    clip_norm = _min_max(clip_scores)
    fused = {
        item: (1.0 - text_weight) * clip_norm.get(item, 0.0)
        + text_weight * min(max(text_scores.get(item, 0.0), 0.0), 1.0)
        for item in clip_scores.keys() | text_scores.keys()
    }
    return _top(fused, clip_scores, text_scores, tiebreak or text_scores, k)


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
    tiebreak: Mapping[str, float],
    k: int,
) -> list[FusedHit]:
    # Ties (equal fused score) go to the higher text score, then CLIP similarity, then name.
    order = sorted(
        fused,
        key=lambda item: (
            -fused[item],
            -tiebreak.get(item, 0.0),
            -clip_scores.get(item, -math.inf),
            item,
        ),
    )
    return [
        FusedHit(
            item=item,
            score=fused[item],
            clip_similarity=clip_scores.get(item),
            text_score=text_scores.get(item, 0.0),
        )
        for item in order[: max(k, 0)]
    ]
