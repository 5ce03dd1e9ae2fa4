"""PDF page retrieval: tokenizing, BM25, CLIP + text fusion, and a hit-rate evaluation.

The evaluation uses real prose (the Apache License 2.0, one section per page) and real
BM25; CLIP cosines are simulated, because no model runs in unit tests: text pages sit in
a narrow noisy band with a faint signal for the right page, scanned pages get a clear one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path

import pytest

from lumen.pdfsearch import (
    BM25Index,
    PageText,
    fuse,
    is_list_page,
    previous_page_item,
    rank_pages,
    tokenize,
    tokenize_query,
)

APACHE = Path(__file__).resolve().parents[1] / "data" / "Apache-2.0.txt"

# (question, 1-based page holding the answer)
TEXT_QUESTIONS = [
    ("What does Legal Entity mean, and what counts as control?", 1),
    ("What is the Source form of a work?", 1),
    ("May I publicly display, publicly perform and sublicense the work?", 2),
    ("What happens to my patent licenses if I institute patent litigation?", 3),
    ("Does the patent grant cover claims infringed by a contribution combined with the work?", 3),
    ("Must modified files carry prominent notices stating that I changed them?", 4),
    ("What must I do with the attribution notices in the NOTICE text file?", 4),
    ("Is a contribution I intentionally submit for inclusion under these terms?", 5),
    ("Can I use the licensor's trade names, trademarks or service marks?", 6),
    ("Is the work provided without warranties of merchantability or fitness?", 7),
    ("Is a contributor liable for loss of goodwill, work stoppage or computer failure?", 8),
    ("May I charge a fee for support, warranty or indemnity?", 9),
    ("How do I apply the license to my own work with the boilerplate notice and brackets?", 10),
]
SCANNED = ["scan_011.jpg", "scan_012.jpg", "scan_013.jpg"]
# (query, index into SCANNED); most share a stray word or two with the licence text
VISUAL_QUERIES = [
    ("a bar chart of quarterly revenue", 0),
    ("signed copyright assignment form with handwritten signature", 1),
    ("photo of the whiteboard diagram of the distribution architecture", 2),
    ("scanned letter from the licensor", 1),
]


def apache_pages() -> dict[str, str]:
    """Ten pages: definitions, sections 2 to 9, and the appendix."""
    text = APACHE.read_text()
    cuts = [m.start() for m in re.finditer(r"^   (?:[2-9]\. |END OF TERMS)", text, re.M)]
    bounds = [0, *cuts, len(text)]
    return {f"page_{i:03d}.jpg": text[a:b] for i, (a, b) in enumerate(pairwise(bounds), 1)}


def page(number: int) -> str:
    return f"page_{number:03d}.jpg"


def test_tokenize_lowercases_drops_stopwords_and_stems() -> None:
    # Snowball English stems: a word and its inflections meet on one stem
    assert tokenize("The Licenses of the Contributors") == tokenize("license contributor")
    assert tokenize("Liabilities, classes; status") == tokenize("liability class status")
    assert tokenize("running runs") == ["run", "run"]
    assert tokenize("How do I use it?") == []
    assert tokenize("Übersetzung der Lizenz 2.0")[-2:] == ["2", "0"]


def test_bm25_ranks_the_page_with_a_rare_phrase_first() -> None:
    pages = apache_pages()
    scores = BM25Index(pages).scores("work stoppage")
    assert max(scores, key=scores.__getitem__) == page(8)


def test_bm25_leaves_out_pages_without_a_match_and_pages_without_text() -> None:
    index = BM25Index({"a.jpg": "patent licence terms", "b.jpg": "trademark use", "s.jpg": ""})
    assert set(index.scores("patents")) == {"a.jpg"}
    assert index.scores("zebra") == {}
    assert index.scores("") == {}


def test_relevance_is_high_for_a_full_match_and_low_for_a_stray_word() -> None:
    index = BM25Index(apache_pages())
    full = index.relevance("trade names, trademarks, service marks")
    stray = index.relevance("signed copyright assignment form with handwritten signature")
    assert max(full.values()) > 0.8
    assert 0 < max(stray.values()) < 0.4


def test_scanned_page_with_the_best_clip_score_ranks_first_without_a_text_match() -> None:
    pages = {"text_1.jpg": "quarterly revenue table", "text_2.jpg": "staff list", "scan.jpg": ""}
    index = BM25Index(pages)
    clip = {"text_1.jpg": 0.24, "text_2.jpg": 0.22, "scan.jpg": 0.31}

    hits = fuse(clip, index.relevance("photo of a handwritten signature"), k=3)

    assert [h.item for h in hits] == ["scan.jpg", "text_1.jpg", "text_2.jpg"]
    assert hits[0].clip_similarity == 0.31
    assert hits[0].text_score == 0.0


def test_text_match_beats_a_slightly_higher_clip_score_on_a_text_heavy_page() -> None:
    pages = apache_pages()
    clip = {item: 0.20 + 0.001 * n for n, item in enumerate(pages)}
    clip[page(6)] = 0.21
    clip[page(2)] = 0.22  # CLIP's favourite, but about something else

    hits = fuse(clip, BM25Index(pages).relevance("use of trade names and trademarks"), k=3)

    assert hits[0].item == page(6)
    assert hits[0].clip_similarity == 0.21  # the raw cosine the API reports


def test_fusion_returns_at_most_k_hits_best_first() -> None:
    clip = {"a": 0.3, "b": 0.2, "c": 0.1}
    hits = fuse(clip, {}, k=2)
    assert [h.item for h in hits] == ["a", "b"]
    assert hits[0].score >= hits[1].score
    assert fuse(clip, {}, k=0) == []


def test_page_known_only_to_text_search_still_ranks_with_no_clip_similarity() -> None:
    hits = fuse({"a": 0.3}, {"b": 0.9}, k=2)
    assert [h.item for h in hits] == ["b", "a"]
    assert (hits[0].clip_similarity, hits[0].text_score) == (None, 0.9)
    assert hits[0].score == pytest.approx(0.6 * 0.9)


def test_text_only_retrieval_finds_the_answer_page_for_nine_in_ten_questions() -> None:
    index = BM25Index(apache_pages())

    hits = [_best(index.scores(q)) == page(p) for q, p in TEXT_QUESTIONS]

    assert sum(hits) / len(hits) >= 0.9


# --- fusion evaluation: the chosen fusion against the alternatives --------------------

Ranker = Callable[[Mapping[str, float], Mapping[str, float], BM25Index, str], str]


def _best(scores: Mapping[str, float]) -> str | None:
    return max(scores, key=lambda item: (scores[item], item)) if scores else None


def rank_fused(clip: Mapping[str, float], _: Mapping[str, float], index: BM25Index, q: str) -> str:
    return rank_pages(clip, index, q, mode="fused", k=1)[0].item  # the product's path


def rank_rrf(clip: Mapping[str, float], text: Mapping[str, float], *_: object) -> str:
    def ranks(s: Mapping[str, float]) -> dict[str, int]:
        return {item: r for r, item in enumerate(sorted(s, key=lambda i: -s[i]), 1)}

    cr, tr = ranks(clip), ranks(text)
    rrf = {i: 1 / (60 + cr[i]) + (1 / (60 + tr[i]) if i in tr else 0.0) for i in clip}
    return max(rrf, key=rrf.__getitem__)


def rank_max_normalised(clip: Mapping[str, float], text: Mapping[str, float], *_: object) -> str:
    top = max(text.values(), default=1.0)
    relative = {item: s / top for item, s in text.items()}
    return fuse(clip, relative, k=1)[0].item


def rank_clip_only(clip: Mapping[str, float], *_: object) -> str:
    return max(clip, key=clip.__getitem__)


def hit_rates(ranker: Ranker, seeds: int = 100) -> tuple[float, float]:
    """hit@1 over (text questions, visual queries) with simulated CLIP cosines."""
    pages = apache_pages() | dict.fromkeys(SCANNED, "")
    index = BM25Index(pages)
    cases = [(q, page(p), False) for q, p in TEXT_QUESTIONS]
    cases += [(q, SCANNED[s], True) for q, s in VISUAL_QUERIES]
    hits = {False: 0, True: 0}
    for seed in range(seeds):
        rng = random.Random(seed)
        for query, answer, visual in cases:
            clip = {item: 0.20 + rng.gauss(0, 0.015) for item in pages}
            clip[answer] += rng.uniform(0.03, 0.08) if visual else rng.uniform(0.0, 0.02)
            hits[visual] += ranker(clip, index.scores(query), index, query) == answer
    return hits[False] / (seeds * len(TEXT_QUESTIONS)), hits[True] / (seeds * len(VISUAL_QUERIES))


def test_fusion_finds_text_answers_and_keeps_most_of_clips_visual_hits() -> None:
    text_rate, visual_rate = hit_rates(rank_fused)
    _, clip_visual_rate = hit_rates(rank_clip_only)

    assert text_rate >= 0.9
    assert visual_rate >= 0.6 * clip_visual_rate


def test_chosen_fusion_beats_rank_fusion_and_max_normalised_scores() -> None:
    def overall(ranker: Ranker) -> float:
        text_rate, visual_rate = hit_rates(ranker)
        n_text, n_visual = len(TEXT_QUESTIONS), len(VISUAL_QUERIES)
        return (text_rate * n_text + visual_rate * n_visual) / (n_text + n_visual)

    chosen = overall(rank_fused)

    assert chosen > overall(rank_rrf)
    assert chosen > overall(rank_max_normalised)


# --- issue 16: list pages, headings, page continuity, proximity -----------------------

TOC_PAGE = "\n".join(
    [
        "Table of Contents",
        *[
            f"{n}.{m} Section about topic {n}{m} . . . . . . . . . {n * 3 + m}"
            for n in range(1, 4)
            for m in range(1, 4)
        ],
        "2.4 Descaling the kettle with vinegar . . . . . . . . 12",
    ]
)
INDEX_PAGE = "\n".join(
    ["Index", *[f"entry_{c} {i}" for i, c in enumerate("abcdefghij", 3)], "vinegar, descaling 12"]
)


def test_tables_of_contents_and_indexes_are_list_pages_and_prose_is_not() -> None:
    assert is_list_page(TOC_PAGE)
    assert is_list_page(INDEX_PAGE)
    prose = "\n".join(apache_pages()[page(4)].splitlines()[:30])
    assert not is_list_page(prose)
    assert not is_list_page("short\npage")


def test_the_answer_page_beats_the_contents_and_index_pages_that_name_it() -> None:
    pages = {
        "doc_page_001.jpg": TOC_PAGE,
        "doc_page_002.jpg": INDEX_PAGE,
        "doc_page_012.jpg": "Descaling. Boil equal parts of vinegar and water, then rinse twice.",
    }
    index = BM25Index(pages)
    scores = index.scores("descaling with vinegar")
    assert max(scores, key=scores.__getitem__) == "doc_page_012.jpg"
    assert index.list_pages() == {"doc_page_001.jpg", "doc_page_002.jpg"}


def test_a_heading_weighs_more_than_the_same_words_in_body_text() -> None:
    body = "The cord is stored under the base. Clean the filter monthly."
    pages = {
        "a_page_001.jpg": PageText(body + " filter", headings=""),
        "a_page_002.jpg": PageText(body + " filter", headings="Cleaning the filter"),
    }
    scores = BM25Index(pages).scores("cleaning the filter")
    assert scores["a_page_002.jpg"] > scores["a_page_001.jpg"]


def test_an_answer_continuing_from_the_foot_of_the_page_before_is_found_on_the_next_page() -> None:
    filler = "General remarks about the product and its many uses. " * 20
    pages = {
        "m_page_001.jpg": filler + "To reset the thermostat, proceed as follows:",
        "m_page_002.jpg": "press and hold the button for ten seconds until the light blinks.",
        "m_page_003.jpg": "Unrelated page about the warranty card.",
    }
    scores = BM25Index(pages).scores("how do I reset the thermostat")
    assert scores.get("m_page_002.jpg", 0.0) > 0.0
    assert "m_page_003.jpg" not in scores
    assert previous_page_item("m_page_002.jpg") == "m_page_001.jpg"
    assert previous_page_item("m_page_001.jpg") is None
    assert previous_page_item("x_page_1000.jpg") == "x_page_0999.jpg"
    assert previous_page_item("photo.jpg") is None


def test_query_words_close_together_earn_a_bonus() -> None:
    apart = "The power cord is long. " + "Other words fill the page here. " * 6 + "It has a switch."
    together = "The power switch is on the cord. " + "Other words fill the page here. " * 6
    pages = {"p_page_001.jpg": apart, "p_page_005.jpg": together}
    scores = BM25Index(pages).scores("power switch")
    assert scores["p_page_005.jpg"] > scores["p_page_001.jpg"]


def test_pages_without_text_and_unknown_words_never_match() -> None:
    index = BM25Index({"s_page_001.jpg": "", "s_page_002.jpg": PageText("", "Heading only")})
    assert index.scores("heading") == {}
    assert index.relevance("anything at all") == {}


def test_text_mode_orders_pages_by_the_text_score_whatever_clip_says() -> None:
    pages = {"t_page_001.jpg": "vinegar " * 3, "t_page_002.jpg": "vinegar " * 30}
    index = BM25Index(pages)
    clip = {"t_page_001.jpg": 0.9, "t_page_002.jpg": 0.1}  # CLIP prefers the other page
    hits = rank_pages(clip, index, "vinegar", mode="text", k=2)
    raw = index.scores("vinegar")
    assert [h.item for h in hits] == sorted(raw, key=lambda i: -raw[i])


def _top_page(pages: Mapping[str, str | PageText], query: str) -> str:
    scores = BM25Index(pages).scores(query)
    return max(scores, key=scores.__getitem__)


def test_typeset_ligatures_and_words_hyphenated_across_lines_match_plain_words() -> None:
    # LaTeX PDFs give "ﬁle" (one ligature character) and "direc-\ntory" as their text
    assert tokenize("the ﬁle was speciﬁed") == tokenize("the file was specified")
    assert tokenize("a system direc-\ntory") == tokenize("a system directory")
    pages = {
        "l_page_001.jpg": "Delete the font ﬁles left in the system direc-\ntory.",
        "l_page_002.jpg": "Fonts are drawn with a pen of the given size and a system.",
    }
    assert _top_page(pages, "remove font files from a system directory") == "l_page_001.jpg"


def test_british_and_american_spellings_meet() -> None:
    assert tokenize("colour behaviour initialise analyse centre grey") == tokenize(
        "color behavior initialize analyze center gray"
    )
    pages = {
        "c_page_001.jpg": "Lines and vertices take a color option: \\fmfv{color=red}.",
        "c_page_002.jpg": "Lines and vertices are placed on galleries around the diagram.",
    }
    assert _top_page(pages, "How can I give lines and vertices a colour?") == "c_page_001.jpg"
    # words that merely end like a British spelling keep their meaning
    assert tokenize("four hours") == ["four", "hour"]


def test_operators_are_words_a_question_can_ask_about() -> None:
    assert tokenize("why is there no i++ or x += 1?") == ["++", "x", "+=", "1"]
    assert "--" not in tokenize("a dash -- in prose")
    pages = {
        "o_page_001.jpg": "Postfix operators like i++ are not defined; write ++i instead.",
        "o_page_002.jpg": "Write the loop counter instead of a constant.",
    }
    assert _top_page(pages, "Why is there no i++ and what can I write instead?") == "o_page_001.jpg"


def test_how_many_asks_for_a_number() -> None:
    assert "number" in tokenize_query("How many threads are used?")
    assert "number" not in tokenize("How many threads are used?")
    pages = {
        "n_page_001.jpg": "The number of secondary threads to use is set by nbthreads.",
        "n_page_002.jpg": "Secondary threads cannot change global variables they see.",
        "n_page_003.jpg": "Export a function before parallel threads call it.",
        "n_page_004.jpg": "The main thread runs the loop one step after the other.",
    }
    assert _top_page(pages, "How many secondary threads are used?") == "n_page_001.jpg"


def test_a_page_inherits_the_section_it_sits_under() -> None:
    filler = "General remarks that say nothing in particular about anything. " * 8
    blocks = filler + " Group the work into blocks."
    pages = {
        "s_page_001.jpg": PageText(filler, headings="2.4 Sizing parallel tasks"),
        "s_page_002.jpg": PageText(blocks),  # still under 2.4: no heading of its own
        "s_page_003.jpg": PageText(filler, headings="3 Debugging"),
        "s_page_004.jpg": PageText(blocks),  # under 3
    }
    scores = BM25Index(pages).scores("sizing the blocks of parallel work")
    assert scores["s_page_002.jpg"] > scores["s_page_004.jpg"]
    # the outline's heading path, when the PDF has one, is used instead
    pages["s_page_004.jpg"] = PageText(blocks, section="2 Tasks / 2.4 Sizing parallel tasks")
    outlined = BM25Index(pages).scores("sizing the blocks of parallel work")
    assert outlined["s_page_004.jpg"] > scores["s_page_004.jpg"]
    assert outlined["s_page_004.jpg"] > outlined["s_page_002.jpg"] * 0.9


def test_code_and_program_output_ending_in_values_are_not_list_pages() -> None:
    # an LP listing and a program's numeric output end their lines in numbers too
    listing = "\n".join(f"r_{i}: + x({i},9) + x({i},12) <= 1" for i in range(1, 13))
    output = "\n".join(["Minimal project duration is 46.00"] + ["1", "0.00", "3.00"] * 5)
    assert not is_list_page(listing)
    assert not is_list_page(output)
    assert is_list_page(TOC_PAGE) and is_list_page(INDEX_PAGE)


# --- bm25s's missing (k1 + 1) factor, fixed once for pages and photos (issue 16) --------

FILLER = "general remarks about nothing in particular, said again and again. " * 3


def _pages_with(answer: str, n: int = 8) -> dict[str, str]:
    pages = {f"d_page_{i:03d}.jpg": f"{FILLER} page {i} filler words" for i in range(1, n + 1)}
    pages["d_page_004.jpg"] = f"{FILLER} {answer}"
    return pages


def test_a_page_holding_each_query_word_once_is_a_full_match() -> None:
    # Lucene's BM25 in bm25s scores one occurrence at idf / (1 + k1); relevance scales
    # it back, so the share of the query a page holds reads as such (0.4 without it)
    index = BM25Index(_pages_with("erase the picture"))
    relevance = index.relevance("erase picture")
    assert relevance["d_page_004.jpg"] > 0.9


def test_photos_and_pages_share_the_relevance_scaling() -> None:
    from lumen.photosearch import relevance, words_index

    words = {"a.jpg": "erase the picture", "b.jpg": "a picture of a cat", "c.jpg": "cat"}
    index = words_index(words)
    assert relevance(index, "erase picture") == index.relevance("erase picture")


def test_fused_mode_lets_a_full_text_match_beat_the_clip_favourite() -> None:
    # the text side was worth 0.6 * 0.4 = 0.24 for a full match before the (1 + k1) fix,
    # under the 0.4 that the CLIP favourite without the words gets
    pages = _pages_with("erase the picture")
    index = BM25Index(pages)
    clip = {item: 0.20 for item in pages}
    clip["d_page_002.jpg"] = 0.30  # CLIP's favourite, no words of the query
    hits = rank_pages(clip, index, "erase picture", mode="fused", k=2)
    assert hits[0].item == "d_page_004.jpg"


def test_fused_mode_keeps_the_text_order_among_pages_repeating_the_query() -> None:
    # capping each page's relevance at 1 would make both pages full matches and leave
    # the order to CLIP; the page that says more about the query stays ahead
    pages = _pages_with("erase the picture. erase it all: erase the whole picture.")
    pages["d_page_006.jpg"] = f"{FILLER} erase the picture"
    index = BM25Index(pages)
    clip = {item: 0.20 + 0.01 * n for n, item in enumerate(pages)}  # page 6 a bit above 4
    hits = rank_pages(clip, index, "erase picture", mode="fused", k=2)
    assert [h.item for h in hits] == ["d_page_004.jpg", "d_page_006.jpg"]
    assert hits[0].text_score == pytest.approx(1.0)
    assert 0 < hits[1].text_score < 1.0


def test_page_relevance_leaves_a_partial_match_as_it_is() -> None:
    from lumen.pdfsearch import page_relevance

    assert page_relevance({"a": 0.3, "b": 0.6}) == {"a": 0.3, "b": 0.6}
    assert page_relevance({"a": 1.0, "b": 3.0}) == pytest.approx({"a": 1 / 3, "b": 1.0})
    assert page_relevance({}) == {}
