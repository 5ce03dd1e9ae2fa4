"""Item states: the Python names and the strings the Lua scripts, `/status` and events use."""

from __future__ import annotations

import re

from lumen.states import ItemState
from lumen.storage import scripts


def test_the_wire_strings_are_the_lowercase_names() -> None:
    assert [s.value for s in ItemState] == ["queued", "processing", "done", "error", "gone", "live"]
    assert all(s == s.name.lower() for s in ItemState)


def test_every_state_the_retry_script_answers_is_an_item_state() -> None:
    answered = set(re.findall(r"state = '(\w+)'", scripts.RETRY))
    assert answered == {"queued", "error", "gone", "live"}
    assert answered <= set(ItemState)
