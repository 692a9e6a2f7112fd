"""Find secrets in text, however they were spelled, and blank them out.

An identity provider's error text may quote what the broker sent it: a password
form-encoded in the body, the client secret inside ``Authorization: Basic
base64(id:secret)``, a refresh token, or a piece of any of them cut off by the
provider's own truncation. A :class:`Redactor` replaces with ``[redacted]``

* every run of 8 or more consecutive characters of any :func:`spellings` of a
  secret (raw, percent- and form-encoded, JSON- and HTML-escaped, its UTF-8
  bytes read as Latin-1): the whole secret, and any prefix, suffix or middle
  piece of it;
* every base64-looking run of the text (standard or URL-safe alphabet, padded
  or not, at any alignment) and every percent-encoded word whose decoding
  holds such a run: the whole run or word, since where a secret sits inside an
  encoding cannot be told without decoding it.

Secrets shorter than :data:`MIN_SECRET_LENGTH` are ignored: they are not
secrets worth the damage redacting them does to ordinary words (Aerion's
default client secret is "public").

How it is fast: the index maps 6-character pieces ("grams") of every
spelling, taken at every third offset, to the spellings they were cut from.
Each run of 8 characters of a spelling contains one of them (one of its first
three offsets is a multiple of 3, and 6 characters from there still fit in 8),
so finding the grams in a text finds every run, and each hit is extended
character by character against its spelling to the whole run. Grams are found
from whichever side is cheaper: with few of them, each is looked for in the
text (``str.find``); with many, each position of the text is looked up in the
index. No regular expression is built from a secret (its ``*`` or ``(`` are
plain characters here), and the index is updated in place as secrets come and
go: the log filter sees every token rotation. Whether an encoded run hides a
secret is remembered until the secrets change: a library's log lines repeat
the same identifiers, and each is a base64-looking run.

Two bounds keep that cost linear at 10,000 providers, each with a reason:

* A spelling gets at most 20 grams: one longer than 65 characters (a JWT) is
  sampled more sparsely, so its pieces are caught from ``len / 20 + 5``
  characters on (40 for a 700-character JWT), and the whole of it always.
* A gram that more than 32 spellings share is not used to find runs: it is
  structure, not a secret (every JWT of an issuer starts with the same header;
  Basic credentials of ``client-1``, ``client-2``... start with the same base64),
  and extending it against thousands of tokens would cost milliseconds per hit.
  A secret's own grams still find it, and the extension covers the shared part.
"""

from __future__ import annotations

import binascii
import html
import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus, unquote, unquote_plus

REDACTED: Final = "[redacted]"

MIN_SECRET_LENGTH: Final = 8
"""Shorter values are not redacted at all."""

RUN: Final = 8
"""Runs of this many characters of a spelling are redacted (so is every longer run)."""

_GRAM: Final = 6
_STEP: Final = RUN - _GRAM + 1
"""Index grams of _GRAM characters every _STEP offsets: every run of RUN holds one."""
_MAX_GRAMS: Final = 20
"""Grams per spelling at most: longer spellings are indexed at a wider step."""
_MAX_SHARED: Final = 32
"""A gram shared by more spellings than this is structure, not used to find runs."""
_VERDICTS: Final = 1024
"""Encoded runs whose verdict is remembered until the secrets change."""
_FIND_FROM_GRAMS: Final = 3
"""Look for each gram in the text when there are fewer than this many per text character:
``str.find`` of a gram costs about a third of slicing and looking up one text position."""

_BASE64_RUN: Final = re.compile(r"[A-Za-z0-9+/_-]{11,}={0,2}")
"""Base64 (either alphabet) long enough to hold RUN bytes: 8 bytes take 11 characters."""
_URLSAFE_TO_STANDARD: Final = str.maketrans("-_", "+/")

_WORD: Final = re.compile(r"[^\s&=;,\"'<>()\[\]{}]+")
"""A value in a query string, form body or header: what percent-encoding is applied to."""
_PERCENT_ESCAPE: Final = re.compile(r"%[0-9A-Fa-f]{2}")


def spellings(secret: str) -> frozenset[str]:
    """The ways *secret* is written in the text of requests, logs and error bodies."""
    as_json = json.dumps(secret)[1:-1]
    # Other percent-encodings (lower-case hex, "/" or "~" left alone) are found by decoding.
    forms = {
        secret,
        quote(secret, safe="", errors="surrogateescape"),  # every reserved character escaped
        quote_plus(secret, errors="surrogateescape"),  # form encoding: space as "+"
        as_json,  # inside a JSON string: \" \\ and \uXXXX
        json.dumps(secret, ensure_ascii=False)[1:-1],
        as_json.replace("/", "\\/"),  # encoders that escape "/" too
        html.escape(secret),
        # UTF-8 read as Latin-1: mojibake, and how decoded base64 is searched (byte by byte).
        secret.encode("utf-8", "surrogateescape").decode("latin-1"),
    }
    return frozenset(forms)


class Redactor:
    """Blanks out a set of secrets in any spelling (see the module docstring).

    Not thread-safe: a redactor shared between threads needs a lock around
    :meth:`update` and :meth:`redact`.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._grams: dict[str, str | set[str]] = {}
        """A gram -> the spelling, or the set of spellings, it was cut from."""
        self._spellings: dict[str, frozenset[str]] = {}
        """Each secret -> its spellings."""
        self._uses: dict[str, int] = {}
        """Each spelling -> how many secrets have it (two secrets can share one)."""
        self._verdicts: dict[str, bool] = {}
        """An encoded run or word -> whether it hides a secret, for the secrets held now."""
        self.update(secrets)

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._spellings)} secrets>"

    def __len__(self) -> int:
        """How many secrets are redacted."""
        return len(self._spellings)

    def update(self, secrets: Iterable[str]) -> None:
        """Redact exactly *secrets* from now on; costs only what changed."""
        wanted = {secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH}
        held = self._spellings.keys()
        if held == wanted:
            return
        self._verdicts.clear()
        for gone in held - wanted:
            for spelling in self._spellings.pop(gone):
                self._uses[spelling] -= 1
                if not self._uses[spelling]:
                    del self._uses[spelling]
                    self._unindex(spelling)
        for new in wanted - held:
            self._spellings[new] = spellings(new)
            for spelling in self._spellings[new]:
                if spelling not in self._uses:
                    self._index(spelling)
                self._uses[spelling] = self._uses.get(spelling, 0) + 1

    def redact(self, text: str) -> str:
        """*text* with every secret found in it replaced by ``[redacted]``."""
        if not self._grams:
            return text
        return _blank(text, self._runs(text) + self._encoded(text))

    def finds(self, text: str) -> bool:
        """Whether *text* holds a secret (anything :meth:`redact` would blank)."""
        return self.redact(text) != text

    # -- the index ------------------------------------------------------------------

    def _index(self, spelling: str) -> None:
        grams = self._grams
        for gram in _grams_of(spelling):
            have = grams.get(gram)
            if have is None:
                grams[gram] = spelling
            elif isinstance(have, str):
                if have != spelling:
                    grams[gram] = {have, spelling}
            else:
                have.add(spelling)

    def _unindex(self, spelling: str) -> None:
        grams = self._grams
        for gram in _grams_of(spelling):
            have = grams.get(gram)
            if isinstance(have, set):
                have.discard(spelling)
                if len(have) == 1:
                    grams[gram] = next(iter(have))
            elif have == spelling:  # (None or another's: the gram came twice in spelling)
                del grams[gram]

    # -- searching ------------------------------------------------------------------

    def _hits(self, text: str) -> list[int]:
        """Where grams of the index start in *text*, in order."""
        grams = self._grams
        if len(grams) < _FIND_FROM_GRAMS * len(text):
            found = []
            for gram in grams:
                at = text.find(gram)
                while at >= 0:
                    found.append(at)
                    at = text.find(gram, at + 1)
            return sorted(found)
        return [at for at in range(len(text) - _GRAM + 1) if text[at : at + _GRAM] in grams]

    def _runs(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` of every run of RUN or more characters of a spelling in *text*."""
        hits = self._hits(text)
        if not hits:
            return []
        grams = self._grams
        runs: list[tuple[int, int]] = []
        extended: dict[tuple[str, int], int] = {}
        """(spelling, text offset - spelling offset) -> end of the run found on that diagonal."""
        for at in hits:
            gram = text[at : at + _GRAM]
            have = grams[gram]
            if isinstance(have, set) and len(have) > _MAX_SHARED:
                continue
            for spelling in (have,) if isinstance(have, str) else have:
                offset = spelling.find(gram)
                while offset >= 0:
                    diagonal = (spelling, at - offset)
                    if extended.get(diagonal, -1) < at + _GRAM:
                        start, end = _extend(text, at, spelling, offset)
                        extended[diagonal] = end
                        if end - start >= RUN:
                            runs.append((start, end))
                    offset = spelling.find(gram, offset + 1)
        return runs

    def _encoded(self, text: str) -> list[tuple[int, int]]:
        """Base64 runs and percent-encoded words of *text* whose decoding holds a secret."""
        found = [m.span() for m in _BASE64_RUN.finditer(text) if self._hides(m.group(), True)]
        if "%" in text:
            found.extend(
                m.span()
                for m in _WORD.finditer(text)
                if _PERCENT_ESCAPE.search(m.group()) and self._hides(m.group(), False)
            )
        return found

    def _hides(self, run: str, base64: bool) -> bool:
        """Whether the base64 *run* or the percent-encoded word *run* hides a secret."""
        verdict = self._verdicts.get(run)
        if verdict is None:
            verdict = self._in_base64(run) if base64 else self._in_percent(run)
            if len(self._verdicts) >= _VERDICTS:
                self._verdicts.clear()
            self._verdicts[run] = verdict
        return verdict

    def _in_base64(self, run: str) -> bool:
        chars = run.rstrip("=").translate(_URLSAFE_TO_STANDARD)
        # The run need not start where its encoding did: decode it at each of the
        # four alignments, filling the gap with "A" (zero bits), so every byte whose
        # bits all lie in the run is decoded right at one of them; search all four
        # at once (a match across the joins could only redact too much).
        views = []
        for fill in ("", "A", "AA", "AAA"):
            aligned = fill + chars
            left = len(aligned) % 4
            aligned = aligned[:-1] if left == 1 else aligned + "=" * (-len(aligned) % 4)
            try:
                views.append(binascii.a2b_base64(aligned).decode("latin-1"))
            except binascii.Error:  # cannot happen with the padding above; never fail a log line
                continue
        return bool(self._runs("\n".join(views)))

    def _in_percent(self, word: str) -> bool:
        for decoded in {unquote(word), unquote_plus(word)}:
            if self._runs(decoded):
                return True
            # base64 with its "+", "/" or "=" escaped: Basic credentials in a URL.
            if any(self._in_base64(m.group()) for m in _BASE64_RUN.finditer(decoded)):
                return True
        return False


def _grams_of(spelling: str) -> list[str]:
    """The grams *spelling* is indexed by: every _STEP characters, at most _MAX_GRAMS."""
    starts = len(spelling) - _GRAM + 1
    step = max(_STEP, -(-starts // _MAX_GRAMS))
    return [spelling[at : at + _GRAM] for at in range(0, starts, step)]


def _extend(text: str, at: int, spelling: str, offset: int) -> tuple[int, int]:
    """The longest run around ``text[at:at+_GRAM] == spelling[offset:offset+_GRAM]``."""
    start, left = at, offset
    while start and left and text[start - 1] == spelling[left - 1]:
        start -= 1
        left -= 1
    end, right = at + _GRAM, offset + _GRAM
    while end < len(text) and right < len(spelling) and text[end] == spelling[right]:
        end += 1
        right += 1
    return start, end


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """*text* with each union of overlapping or touching *spans* replaced by one marker."""
    if not spans:
        return text
    parts: list[str] = []
    done = 0
    for start, end in sorted(spans):
        if start > done:
            parts.extend((text[done:start], REDACTED))
        elif not parts:  # a span at the very start
            parts.append(REDACTED)
        done = max(done, end)
    parts.append(text[done:])
    return "".join(parts)
