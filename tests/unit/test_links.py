"""Signed image links: one image, one user, until an expiry; never a bearer token."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from lumen.auth import Authenticator
from lumen.config import AuthSettings
from lumen.errors import Unauthorized
from lumen.links import ImageLinks
from tests.support.fakes import FakeClock, FakeUserStore

SECRET = "k" * 48
ITEM = "uploads/ann/holiday photos/beach #1.jpg"


def parts(url: str) -> tuple[str, dict[str, str]]:
    """(item, query) as the image route would see them."""
    split = urlsplit(url)
    assert split.path.startswith("/image/")
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    return unquote(split.path.removeprefix("/image/")), query


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def links(clock: FakeClock) -> ImageLinks:
    return ImageLinks(SECRET, clock=clock)


def test_a_signed_link_opens_its_image_for_its_user(links: ImageLinks) -> None:
    item, query = parts(links.sign("ann", ITEM, 3600))
    assert item == ITEM
    assert links.verify_query(item, query) == "ann"
    assert links.verify(item, user=query["u"], exp=query["exp"], sig=query["sig"]) == "ann"


def test_a_link_carries_no_token(links: ImageLinks) -> None:
    url = links.sign("ann", ITEM, 3600)
    assert "token" not in url
    assert set(parts(url)[1]) == {"u", "exp", "sig"}


def test_a_link_expires(links: ImageLinks, clock: FakeClock) -> None:
    item, query = parts(links.sign("ann", ITEM, 3600))
    clock.advance(3600 + 60)
    with pytest.raises(Unauthorized, match="expired"):
        links.verify_query(item, query)


def test_a_link_lasts_at_least_its_ttl(links: ImageLinks, clock: FakeClock) -> None:
    url = links.sign("ann", ITEM, 3600)
    clock.advance(3599)
    assert links.verify_query(*parts(url)) == "ann"


def test_the_same_image_gets_the_same_url_for_a_while_so_browsers_cache_it(
    links: ImageLinks, clock: FakeClock
) -> None:
    clock.now = 1_700_000_000 - 1_700_000_000 % 60 + 1
    first = links.sign("ann", ITEM, 3600)
    clock.advance(59)
    assert links.sign("ann", ITEM, 3600) == first
    clock.advance(1)
    assert links.sign("ann", ITEM, 3600) != first


@pytest.mark.parametrize(
    "change",
    [
        {"item": "uploads/ann/other.jpg"},
        {"u": "bob"},
        {"exp": "9999999999"},
        {"sig": "A" * 43},
        {"sig": ""},
        {"exp": "1e10"},
        {"exp": "²"},
        {"sig": "é" * 43},
    ],
)
def test_an_altered_link_is_refused(links: ImageLinks, change: dict[str, str]) -> None:
    item, query = parts(links.sign("ann", ITEM, 3600))
    item = change.pop("item", item)
    with pytest.raises(Unauthorized):
        links.verify_query(item, {**query, **change})


def test_a_link_without_its_signature_is_refused(links: ImageLinks) -> None:
    with pytest.raises(Unauthorized, match="signature"):
        links.verify_query(ITEM, {"u": "ann", "exp": "9999999999"})


def test_a_link_from_another_secret_is_refused(links: ImageLinks, clock: FakeClock) -> None:
    other = ImageLinks("z" * 48, clock=clock)
    with pytest.raises(Unauthorized):
        links.verify_query(*parts(other.sign("ann", ITEM, 3600)))


def test_a_link_signature_is_not_a_bearer_token(clock: FakeClock) -> None:
    fast = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
    store = FakeUserStore(clock=clock)
    auth = Authenticator(AuthSettings(jwt_secret=SECRET), store, clock=clock, hasher=fast)
    auth.signup("ann", "correct horse", "198.51.100.7")
    links = ImageLinks(SECRET, clock=clock)
    url = links.sign("ann", ITEM, 3600)
    _, query = parts(url)
    for credential in (query["sig"], url, url.split("?", 1)[1]):
        with pytest.raises(Unauthorized):
            auth.verify(credential)
        with pytest.raises(Unauthorized):
            auth.verify_stream(credential)
    token = auth.login("ann", "correct horse", "198.51.100.7")
    with pytest.raises(Unauthorized):
        links.verify(ITEM, user="ann", exp=query["exp"], sig=token)
