"""Authenticator through an in-memory UserStore: signup, login, throttling, tokens, tickets."""

from __future__ import annotations

import io

import jwt
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pydantic import ValidationError

from lumen import cli
from lumen.auth import (
    Authenticator,
    address_subject,
    client_address,
    create_account,
    validate_password,
    validate_username,
)
from lumen.config import AuthSettings
from lumen.errors import (
    BadRequest,
    Conflict,
    SignupClosed,
    TooManyRequests,
    Unauthorized,
)
from tests.support.fakes import FakeClock, FakeUserStore

SECRET = "s" * 48
PASSWORD = "correct horse"
# Argon2 at its cheapest: these tests are about the rules, not the hash's cost.
FAST = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
HOME, CAFE, ATTACKER = "198.51.100.7", "203.0.113.9", "192.0.2.66"


def make_settings(**overrides: object) -> AuthSettings:
    base: dict[str, object] = {
        "jwt_secret": SECRET,
        "login_max_failures": 3,
        "login_max_failures_per_address": 6,
        "login_window_s": 900,
        "signup_per_address": 2,
        "signup_window_s": 3600,
        "token_ttl_s": 3600,
        "stream_ticket_ttl_s": 60,
    }
    base.update(overrides)
    return AuthSettings.model_validate(base)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> FakeUserStore:
    return FakeUserStore(clock=clock)


@pytest.fixture
def auth(store: FakeUserStore, clock: FakeClock) -> Authenticator:
    a = Authenticator(make_settings(), store, clock=clock, hasher=FAST)
    a.signup("ann", PASSWORD, HOME)
    return a


def fail_logins(auth: Authenticator, user: str, client: str, times: int) -> None:
    for i in range(times):
        with pytest.raises(Unauthorized):
            auth.login(user, f"wrong password {i}", client)


# --- signup ---------------------------------------------------------------------------------


def test_signup_creates_an_account_that_can_log_in(auth: Authenticator) -> None:
    token = auth.login("ann", PASSWORD, HOME)
    assert auth.verify(token) == "ann"


def test_signup_of_a_taken_name_is_a_conflict(auth: Authenticator) -> None:
    with pytest.raises(Conflict):
        auth.signup("ann", "another password", CAFE)


@pytest.mark.parametrize(
    ("username", "password"),
    [("ab", PASSWORD), (".hidden", PASSWORD), ("a/b/c", PASSWORD), ("bob", "short")],
)
def test_signup_refuses_bad_names_and_short_passwords_before_storage(
    store: FakeUserStore, clock: FakeClock, username: str, password: str
) -> None:
    auth = Authenticator(make_settings(), store, clock=clock, hasher=FAST)
    with pytest.raises(BadRequest):
        auth.signup(username, password, HOME)
    assert store.touched == []


def test_a_megabyte_username_never_reaches_the_store(
    store: FakeUserStore, clock: FakeClock
) -> None:
    auth = Authenticator(make_settings(), store, clock=clock, hasher=FAST)
    huge = "a" * 1024**2
    with pytest.raises(BadRequest):
        auth.login(huge, PASSWORD, HOME)
    with pytest.raises(BadRequest):
        auth.signup(huge, PASSWORD, HOME)
    assert store.touched == []


def test_an_oversized_password_is_refused_before_storage(
    store: FakeUserStore, clock: FakeClock
) -> None:
    auth = Authenticator(make_settings(max_password_chars=100), store, clock=clock, hasher=FAST)
    with pytest.raises(BadRequest, match="at most 100"):
        auth.login("ann", "p" * 101, HOME)
    with pytest.raises(BadRequest, match="at most 100"):
        auth.signup("ann", "p" * 101, HOME)
    assert store.touched == []


def test_closed_signup_is_refused_and_names_the_operator_command(
    store: FakeUserStore, clock: FakeClock
) -> None:
    auth = Authenticator(make_settings(public_signup=False), store, clock=clock, hasher=FAST)
    with pytest.raises(SignupClosed) as caught:
        auth.signup("bob", PASSWORD, HOME)
    assert caught.value.status == 403
    assert caught.value.code == "signup_closed"
    assert "lumen admin create-user" in caught.value.message
    assert not store.exists("bob")


def test_an_operator_creates_accounts_while_signup_is_closed(
    store: FakeUserStore, clock: FakeClock
) -> None:
    settings = make_settings(public_signup=False)
    create_account(store, settings, "bob", PASSWORD, FAST)
    auth = Authenticator(settings, store, clock=clock, hasher=FAST)
    assert auth.verify(auth.login("bob", PASSWORD, HOME)) == "bob"


def test_signups_are_limited_per_address_and_other_addresses_still_sign_up(
    auth: Authenticator, clock: FakeClock
) -> None:
    auth.signup("bob", PASSWORD, ATTACKER)
    auth.signup("cid", PASSWORD, ATTACKER)
    with pytest.raises(TooManyRequests) as caught:
        auth.signup("dan", PASSWORD, ATTACKER)
    assert caught.value.status == 429
    assert 0 < caught.value.retry_after_s <= 3600
    auth.signup("dan", PASSWORD, CAFE)
    clock.advance(3600)
    auth.signup("eve", PASSWORD, ATTACKER)


# --- login and throttling -------------------------------------------------------------------


def test_wrong_password_and_unknown_user_get_the_same_401(auth: Authenticator) -> None:
    with pytest.raises(Unauthorized) as wrong:
        auth.login("ann", "not the password", HOME)
    with pytest.raises(Unauthorized) as unknown:
        auth.login("nobody", PASSWORD, HOME)
    assert wrong.value.message == unknown.value.message == "incorrect username or password"


def test_failed_logins_lock_that_name_from_that_address_even_with_the_right_password(
    auth: Authenticator,
) -> None:
    fail_logins(auth, "ann", ATTACKER, 3)
    with pytest.raises(TooManyRequests) as caught:
        auth.login("ann", PASSWORD, ATTACKER)
    assert 0 < caught.value.retry_after_s <= 900


def test_the_owner_logging_in_from_another_address_is_never_locked_out(
    auth: Authenticator,
) -> None:
    fail_logins(auth, "ann", ATTACKER, 3)
    with pytest.raises(TooManyRequests):
        auth.login("ann", "guess", ATTACKER)
    assert auth.verify(auth.login("ann", PASSWORD, HOME)) == "ann"


def test_one_address_guessing_many_names_is_throttled_by_address(auth: Authenticator) -> None:
    for name in ("ann", "bob"):
        fail_logins(auth, name, ATTACKER, 3)
    with pytest.raises(TooManyRequests, match="from your address"):
        auth.login("cid", "guess", ATTACKER)
    assert auth.verify(auth.login("ann", PASSWORD, HOME)) == "ann"


def test_refusals_of_a_locked_name_do_not_use_up_the_address_allowance(
    auth: Authenticator,
) -> None:
    fail_logins(auth, "bob", CAFE, 3)
    for _ in range(10):
        with pytest.raises(TooManyRequests, match="for this account"):
            auth.login("bob", "guess", CAFE)
    assert auth.verify(auth.login("ann", PASSWORD, CAFE)) == "ann"


def test_successful_logins_never_count_against_the_address(auth: Authenticator) -> None:
    for _ in range(8):
        auth.login("ann", PASSWORD, HOME)
    fail_logins(auth, "ann", HOME, 2)
    assert auth.verify(auth.login("ann", PASSWORD, HOME)) == "ann"


def test_a_success_clears_the_failures_for_that_name_and_address(auth: Authenticator) -> None:
    fail_logins(auth, "ann", HOME, 2)
    auth.login("ann", PASSWORD, HOME)
    fail_logins(auth, "ann", HOME, 2)
    assert auth.verify(auth.login("ann", PASSWORD, HOME)) == "ann"


def test_the_lock_ends_with_its_window(auth: Authenticator, clock: FakeClock) -> None:
    fail_logins(auth, "ann", ATTACKER, 3)
    with pytest.raises(TooManyRequests):
        auth.login("ann", PASSWORD, ATTACKER)
    clock.advance(900)
    assert auth.verify(auth.login("ann", PASSWORD, ATTACKER)) == "ann"


def test_ipv6_clients_are_counted_per_64_prefix(auth: Authenticator) -> None:
    fail_logins(auth, "ann", "2001:db8:1:2::1", 3)
    with pytest.raises(TooManyRequests):
        auth.login("ann", PASSWORD, "2001:db8:1:2:ffff::9")
    assert auth.verify(auth.login("ann", PASSWORD, "2001:db8:1:3::1")) == "ann"


def test_address_subjects_are_bounded_and_plain() -> None:
    assert address_subject("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_subject("2001:db8::1") == "2001:db8::/64"
    odd = address_subject("x|y " * 100)
    assert len(odd) <= 64
    assert "|" not in odd


# --- client addresses -----------------------------------------------------------------------


def test_forwarded_for_is_ignored_when_no_proxy_is_trusted() -> None:
    assert client_address(HOME, "10.9.9.9", []) == HOME


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address(ATTACKER, "10.9.9.9", ["10.0.0.0/8"]) == ATTACKER


def test_a_trusted_proxy_gives_the_right_most_untrusted_hop() -> None:
    spoofed = f"1.1.1.1, {HOME}"
    assert client_address("10.0.0.2", spoofed, ["10.0.0.0/8"]) == HOME


def test_a_chain_of_trusted_proxies_is_walked_past() -> None:
    chain = f"6.6.6.6, {HOME}, 10.0.0.5, 172.16.0.3"
    assert client_address("10.0.0.2", chain, ["10.0.0.0/8", "172.16.0.3"]) == HOME


def test_ports_brackets_and_mapped_addresses_are_normalised() -> None:
    trusted = ["10.0.0.1"]
    assert client_address("10.0.0.1", f"{HOME}:5555", trusted) == HOME
    assert client_address("::ffff:10.0.0.1", "[2001:db8::7]:443", trusted) == "2001:db8::7"
    assert client_address("::ffff:198.51.100.7", None, []) == HOME


def test_a_garbage_hop_falls_back_to_the_nearest_trusted_proxy() -> None:
    assert client_address("10.0.0.1", "not-an-ip", ["10.0.0.0/8"]) == "10.0.0.1"


def test_a_peer_that_is_not_an_ip_is_used_as_is() -> None:
    assert client_address("testclient", "1.2.3.4", ["10.0.0.0/8"]) == "testclient"
    assert client_address(None, "1.2.3.4", []) == "unknown"


def test_settings_refuse_a_malformed_trusted_proxy() -> None:
    with pytest.raises(ValidationError, match="trusted_proxies"):
        make_settings(trusted_proxies=["10.0.0.0/8", "proxy.example"])


# --- bearer tokens --------------------------------------------------------------------------


def test_an_expired_token_is_refused(auth: Authenticator, clock: FakeClock) -> None:
    token = auth.login("ann", PASSWORD, HOME)
    clock.advance(3600)
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify(token)


def test_a_tampered_token_is_refused(auth: Authenticator) -> None:
    header, payload, sig = auth.login("ann", PASSWORD, HOME).split(".")
    forged_payload = jwt.utils.base64url_encode(
        b'{"sub":"bob","iat":1700000000,"exp":9999999999,"typ":"access"}'
    ).decode()
    with pytest.raises(Unauthorized):
        auth.verify(f"{header}.{forged_payload}.{sig}")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(Unauthorized):
        auth.verify(f"{header}.{payload}.{flipped}")


def test_an_unsigned_alg_none_token_is_refused(auth: Authenticator, clock: FakeClock) -> None:
    now = int(clock())
    claims = {"sub": "ann", "iat": now, "exp": now + 600, "typ": "access"}
    with pytest.raises(Unauthorized):
        auth.verify(jwt.encode(claims, None, algorithm="none"))


def test_a_token_signed_with_another_secret_is_refused(
    auth: Authenticator, clock: FakeClock
) -> None:
    now = int(clock())
    claims = {"sub": "ann", "iat": now, "exp": now + 600}
    with pytest.raises(Unauthorized):
        auth.verify(jwt.encode(claims, "x" * 48, algorithm="HS256"))


def test_a_token_without_a_subject_or_expiry_is_refused(
    auth: Authenticator, clock: FakeClock
) -> None:
    now = int(clock())
    for claims in ({"iat": now, "exp": now + 600}, {"sub": "ann", "iat": now}):
        with pytest.raises(Unauthorized):
            auth.verify(jwt.encode(claims, SECRET, algorithm="HS256"))


def test_the_token_of_a_deleted_user_is_refused(auth: Authenticator, store: FakeUserStore) -> None:
    token = auth.login("ann", PASSWORD, HOME)
    store.delete("ann")
    with pytest.raises(Unauthorized):
        auth.verify(token)


def test_a_token_from_before_this_version_without_typ_still_works(
    auth: Authenticator, clock: FakeClock
) -> None:
    now = int(clock())
    legacy = jwt.encode({"sub": "ann", "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    assert auth.verify(legacy) == "ann"


def test_a_bearer_token_keeps_working_after_a_reset(auth: Authenticator) -> None:
    token = auth.login("ann", PASSWORD, HOME)
    auth.revoke_streams("ann")
    assert auth.verify(token) == "ann"


# --- stream tickets -------------------------------------------------------------------------


def test_a_stream_ticket_is_not_a_bearer_token(auth: Authenticator) -> None:
    ticket = auth.issue_stream_ticket(auth.login("ann", PASSWORD, HOME))
    with pytest.raises(Unauthorized, match="stream ticket"):
        auth.verify(ticket)


def test_a_ticket_cannot_issue_another_ticket(auth: Authenticator) -> None:
    ticket = auth.issue_stream_ticket(auth.login("ann", PASSWORD, HOME))
    with pytest.raises(Unauthorized):
        auth.issue_stream_ticket(ticket)


def test_a_ticket_opens_a_stream_that_lasts_as_long_as_its_bearer_token(
    auth: Authenticator, clock: FakeClock
) -> None:
    bearer = auth.login("ann", PASSWORD, HOME)
    grant = auth.verify_stream(auth.issue_stream_ticket(bearer))
    assert grant.user == "ann"
    clock.advance(3599)
    assert auth.still_valid(grant)
    clock.advance(1)
    assert not auth.still_valid(grant)


def test_a_bearer_token_also_opens_a_stream(auth: Authenticator) -> None:
    grant = auth.verify_stream(auth.login("ann", PASSWORD, HOME))
    assert grant.user == "ann"
    assert auth.still_valid(grant)


def test_a_ticket_must_be_used_within_its_ttl(auth: Authenticator, clock: FakeClock) -> None:
    ticket = auth.issue_stream_ticket(auth.login("ann", PASSWORD, HOME))
    clock.advance(60)
    with pytest.raises(Unauthorized, match="expired"):
        auth.verify_stream(ticket)


def test_a_reset_ends_open_streams_and_voids_unused_tickets(auth: Authenticator) -> None:
    bearer = auth.login("ann", PASSWORD, HOME)
    by_ticket = auth.verify_stream(auth.issue_stream_ticket(bearer))
    by_bearer = auth.verify_stream(bearer)
    unused = auth.issue_stream_ticket(bearer)
    auth.revoke_streams("ann")
    assert not auth.still_valid(by_ticket)
    assert not auth.still_valid(by_bearer)
    with pytest.raises(Unauthorized, match="reset"):
        auth.verify_stream(unused)
    assert auth.still_valid(auth.verify_stream(auth.issue_stream_ticket(bearer)))


def test_a_deleted_account_ends_its_streams(auth: Authenticator, store: FakeUserStore) -> None:
    grant = auth.verify_stream(auth.login("ann", PASSWORD, HOME))
    store.delete("ann")
    assert not auth.still_valid(grant)


def test_stream_claims_on_a_token_without_the_stream_audience_are_refused(
    auth: Authenticator, clock: FakeClock
) -> None:
    now = int(clock())
    base = {"sub": "ann", "iat": now, "exp": now + 60, "ep": 0, "sexp": now + 600}
    no_aud = jwt.encode({**base, "typ": "stream"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized):
        auth.verify_stream(no_aud)
    aud_on_access = jwt.encode(
        {**base, "typ": "access", "aud": "lumen:stream"}, SECRET, algorithm="HS256"
    )
    with pytest.raises(Unauthorized):
        auth.verify(aud_on_access)


# --- the operator's `lumen admin create-user` -----------------------------------------------


@pytest.fixture
def operator_store(monkeypatch: pytest.MonkeyPatch, store: FakeUserStore) -> FakeUserStore:
    monkeypatch.setattr(cli, "operator_users", lambda settings: store)
    monkeypatch.setenv("LUMEN_AUTH__PUBLIC_SIGNUP", "false")
    return store


def test_the_operator_creates_an_account_with_a_password_from_stdin(
    operator_store: FakeUserStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PASSWORD}\n"))
    assert cli.run(["admin", "create-user", "bob", "--password-stdin"]) == 0
    auth = Authenticator(make_settings(public_signup=False), operator_store, clock=clock)
    assert auth.verify(auth.login("bob", PASSWORD, HOME)) == "bob"


def test_the_operator_is_told_when_a_name_is_taken_or_a_password_too_short(
    operator_store: FakeUserStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_account(operator_store, make_settings(), "bob", PASSWORD, FAST)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PASSWORD}\n"))
    assert cli.run(["admin", "create-user", "bob", "--password-stdin"]) == 2
    assert "already taken" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.run(["admin", "create-user", "cid", "--password-stdin"]) == 2
    assert "at least" in capsys.readouterr().err
    assert not operator_store.exists("cid")


def test_the_operator_prompt_asks_twice_and_creates_nothing_when_they_differ(
    operator_store: FakeUserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([PASSWORD, PASSWORD + "!"])
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: next(answers))
    assert cli.run(["admin", "create-user", "bob"]) == 2
    assert not operator_store.exists("bob")


@pytest.mark.parametrize("name", ["abc", "a.b-c_d", "A" * 64, "_x1"])
def test_good_usernames_pass(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize("name", ["ab", ".abc", "a b c", "a/b/c", "x" * 65, "naïve"])
def test_bad_usernames_are_refused(name: str) -> None:
    with pytest.raises(BadRequest):
        validate_username(name)


def test_password_length_rules() -> None:
    s = AuthSettings()
    with pytest.raises(BadRequest):
        validate_password("short", s)
    with pytest.raises(BadRequest):
        validate_password("x" * (s.max_password_chars + 1), s)
    assert validate_password("long enough", s) == "long enough"
