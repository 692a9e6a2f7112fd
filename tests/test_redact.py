"""The redactor: every spelling of a secret, every piece of 8, and nothing else."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from broker.core.redact import MIN_SECRET_LENGTH, REDACTED, RUN, Redactor, spellings

SECRET = "s3cr+t:with %2B/and spaces"
PASSWORD = "pa ss+w%rd:1"
UNICODE = "grüße:€ 100%"
METACHARACTERS = r"a.b*c+d?(e)[f]|g^$\h{2}"
QUOTES = "say \"hi\" & <bye> 'now'"
SECRETS = (SECRET, PASSWORD, UNICODE, METACHARACTERS, QUOTES)
CLIENT_ID = "app"

REDACTOR = Redactor(SECRETS)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "percent-encoded": lambda s: quote(s, safe=""),
    "percent-encoded, / kept": quote,
    "form-encoded": quote_plus,
    "percent-encoded, lower-case hex": lambda s: lower_hex(quote(s, safe="")),
    "form-encoded twice": lambda s: quote_plus(quote_plus(s)),
    "JSON string": lambda s: json.dumps(s)[1:-1],
    "JSON string, not ASCII": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "JSON string, / escaped": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "HTML": html.escape,
    "UTF-8 read as Latin-1": lambda s: s.encode().decode("latin-1"),
    "base64": b64,
    "base64, no padding": lambda s: b64(s).rstrip("="),
    "base64 URL-safe": b64url,
    "base64 URL-safe, no padding": lambda s: b64url(s).rstrip("="),
    "base64 of it at offset 1": lambda s: b64("x" + s),
    "base64 of it at offset 2": lambda s: b64("xy" + s),
    "base64 run starting mid-group": lambda s: b64("xyz" + s)[1:],
    "base64 glued to letters": lambda s: "token" + b64(s),
    "base64, percent-encoded": lambda s: quote(b64("x" + s), safe=""),
    "Basic credentials (RFC 6749)": lambda s: b64(f"{quote_plus(CLIENT_ID)}:{quote_plus(s)}"),
    "Basic credentials (verbatim id:secret)": lambda s: b64(f"{CLIENT_ID}:{s}"),
    "Basic credentials, URL-safe": lambda s: b64url(f"{CLIENT_ID}:{quote_plus(s)}"),
}
"""Each encoding, as a function of the secret: the marker replaces all of the encoded text."""

SPELLED = [
    pytest.param(secret, name, id=f"{name}-{index}")
    for name in ENCODINGS
    for index, secret in enumerate(SECRETS)
]


@pytest.mark.parametrize(("secret", "encoding"), SPELLED)
def test_every_spelling_is_redacted(secret: str, encoding: str) -> None:
    """Each secret in each encoding, inside ordinary text: one marker, the text around kept."""
    encoded = ENCODINGS[encoding](secret)
    assert REDACTOR.redact(f"error: {encoded} (rejected)") == f"error: {REDACTED} (rejected)"


@pytest.mark.parametrize("secret", SECRETS)
def test_a_form_body_keeps_its_other_fields(secret: str) -> None:
    body = f"grant_type=password&password={quote_plus(secret)}&client_id=app"
    expected = f"grant_type=password&password={REDACTED}&client_id=app"
    assert REDACTOR.redact(body) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(SECRET, REDACTED, id="whole"),
        pytest.param(
            f"pw={PASSWORD}; again {PASSWORD}", f"pw={REDACTED}; again {REDACTED}", id="twice"
        ),
        pytest.param(f"got {PASSWORD[:8]}...", f"got {REDACTED}...", id="prefix-of-8"),
        pytest.param(f"got ...{PASSWORD[-8:]}", f"got ...{REDACTED}", id="suffix-of-8"),
        pytest.param(f"got {SECRET[5:14]}!", f"got {REDACTED}!", id="middle-piece"),
        pytest.param(f"got {UNICODE[:8]}!", f"got {REDACTED}!", id="unicode-piece"),
        pytest.param(f"got {PASSWORD[:7]}!", f"got {PASSWORD[:7]}!", id="7-characters-shown"),
        pytest.param(
            f"password={quote_plus(PASSWORD)[:8]}",
            f"password={REDACTED}",
            id="piece-of-the-form-encoded-spelling",
        ),
        pytest.param(f"{SECRET[:10]}{PASSWORD[-10:]}", REDACTED, id="pieces-of-two-secrets-joined"),
        pytest.param(
            f"Authorization: Basic {b64(f'{CLIENT_ID}:{quote_plus(PASSWORD)}')}",
            f"Authorization: Basic {REDACTED}",
            id="basic-header-one-marker",
        ),
        pytest.param(METACHARACTERS + METACHARACTERS, REDACTED, id="metacharacters-twice-adjacent"),
    ],
)
def test_redacted_text(text: str, expected: str) -> None:
    assert REDACTOR.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("The quick brown fox jumps over the lazy dog.", id="prose"),
        pytest.param('127.0.0.1:53412 - "POST /oauth/token HTTP/1.1" 400 Bad Request', id="access"),
        pytest.param("send_request_headers.started request=<Request [b'POST']>", id="httpcore"),
        pytest.param("Authorization: Basic (none) x-www-form-urlencoded", id="identifiers"),
        pytest.param("https%3A%2F%2Fidp.example%2Foauth%2Ftoken%3Fa%3Db", id="percent-encoded"),
        pytest.param(b64("an ordinary sentence, base64-encoded"), id="other-base64"),
        pytest.param("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2ln", id="a-jwt"),
        pytest.param("grüße aus 100% Köln, 8 € bitte", id="unicode-prose"),
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    """No secret in it: the very same text comes back."""
    assert REDACTOR.redact(text) == text
    assert not REDACTOR.finds(text)


def test_short_values_are_not_secrets() -> None:
    """Under 8 characters nothing is redacted ("public" is Aerion's default client secret),
    so ordinary words survive; a value of 8 is redacted wherever it stands."""
    assert MIN_SECRET_LENGTH == RUN == 8
    short = Redactor(["public", "admin", "1234567", ""])
    assert len(short) == 0
    text = "public client admin 1234567 publicity"
    assert short.redact(text) == text
    eight = Redactor(["password"])
    assert eight.redact("bad password for passwords") == f"bad {REDACTED} for {REDACTED}s"


def test_overlapping_and_nested_secrets() -> None:
    """Secrets that overlap in the text, or contain one another, leave no fragment."""
    redactor = Redactor(["abcdefgh1234", "1234wxyz5678", "xxabcdefghyy"])
    assert redactor.redact("<abcdefgh1234wxyz5678>") == f"<{REDACTED}>"
    assert redactor.redact("<xxabcdefghyy>") == f"<{REDACTED}>"
    assert redactor.redact("<abcdefgh12> <1234wxyz>") == f"<{REDACTED}> <{REDACTED}>"


def test_a_long_secret_found_whole_once() -> None:
    """A 1,000-character token in a long text: one marker, none of it left."""
    token = "".join(chr(0x61 + (i * 7919) % 26) for i in range(1000))
    redactor = Redactor([token])
    assert redactor.redact(f"a {token} b {token[300:700]} c") == f"a {REDACTED} b {REDACTED} c"


def test_update_adds_and_removes_only_what_changed() -> None:
    """Rotated tokens in, old ones out; a spelling two secrets share stays until both go."""
    spaced = "abc def ghi"
    encoded = quote(spaced)  # "abc%20def%20ghi": a spelling of spaced and a secret itself
    redactor = Redactor(["first-a1b2c3d4", spaced, encoded])
    assert redactor.redact("first-a1b2c3d4") == REDACTED
    redactor.update(["second-e5f6g7h8", spaced, encoded])
    assert redactor.redact("first-a1b2c3d4") == "first-a1b2c3d4"
    assert redactor.redact("second-e5f6g7h8") == REDACTED
    redactor.update(["second-e5f6g7h8", encoded])
    assert redactor.redact(encoded) == REDACTED
    assert redactor.redact(spaced) == spaced
    redactor.update([spaced])
    assert redactor.redact(encoded) == REDACTED, "still a spelling of the remaining secret"
    redactor.update([])
    assert len(redactor) == 0
    assert redactor.redact(encoded) == encoded


def test_redacting_twice_changes_nothing_more() -> None:
    text = f"Basic {b64(SECRET)} and {quote_plus(PASSWORD)} and {UNICODE}"
    once = REDACTOR.redact(text)
    assert REDACTOR.redact(once) == once


def test_repr_names_no_secret() -> None:
    assert repr(REDACTOR) == f"<Redactor of {len(SECRETS)} secrets>"


def test_spellings_of_a_plain_secret_are_one() -> None:
    """An alphanumeric secret is spelled the same in every encoding: one index entry set."""
    assert spellings("abcDEF123456") == {"abcDEF123456"}


def test_odd_characters_do_not_break_it() -> None:
    """Lone surrogates (from a badly encoded environment variable) and NULs are fine."""
    odd = "bad\udcff-surrogate\x00nul"
    redactor = Redactor([odd])
    assert redactor.redact(f"x {odd} y") == f"x {REDACTED} y"


def test_results_do_not_depend_on_how_grams_are_found() -> None:
    """With few grams each is looked for in the text, with many each text position is
    looked up: the same texts come out the same."""
    crowded = Redactor([*SECRETS, *(f"filler-{n:04d}-{n * 7919:08x}" for n in range(2000))])
    texts = [
        f"error: {encode(secret)} (rejected)" for encode in ENCODINGS.values() for secret in SECRETS
    ]
    texts += [f"got {PASSWORD[:8]}...", f"got {PASSWORD[:7]}!", "The quick brown fox."]
    assert [crowded.redact(text) for text in texts] == [REDACTOR.redact(text) for text in texts]


def test_a_piece_many_secrets_share_is_structure() -> None:
    """Every token of an issuer starts with the same JWT header: alone it is not redacted
    (it is no secret, and extending it against every token would cost milliseconds), but
    each token is redacted whole, its header included, and so is a piece of its own."""
    header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    tokens = [f"{header}.{b64(f'payload {n:03d} of a token')}.sig{n:03d}zz" for n in range(40)]
    redactor = Redactor(tokens)
    assert redactor.redact(f"alg: {header}") == f"alg: {header}"
    assert redactor.redact(f"token {tokens[7]} refused") == f"token {REDACTED} refused"
    own = tokens[7][-12:]  # the end of its payload and its signature: its own
    assert redactor.redact(f"<{own}>") == f"<{REDACTED}>"


def test_a_long_secret_is_caught_in_pieces_of_a_twentieth_of_it() -> None:
    """A 700-character value (a JWT) gets at most 20 index entries: every piece of
    700 / 20 + 5 characters is still caught, wherever it starts, and the whole of it."""
    token = "".join(chr(0x41 + (i * 7919) % 58) for i in range(700))
    redactor = Redactor([token])
    size = 700 // 20 + 5
    missed = [
        at for at in range(700 - size) if REDACTED not in redactor.redact(token[at : at + size])
    ]
    assert missed == []
    assert redactor.redact(f"x {token} y") == f"x {REDACTED} y"


def test_remembered_verdicts_follow_the_secrets() -> None:
    """A base64 run found harmless is looked at again once a secret it hides is added."""
    hidden = "later-added-secret"
    run = b64(f"user:{hidden}")
    redactor = Redactor(["0ther-value-0001"])
    assert redactor.redact(run) == run
    redactor.update(["0ther-value-0001", hidden])
    assert redactor.redact(run) == REDACTED
    redactor.update(["0ther-value-0001"])
    assert redactor.redact(run) == run
