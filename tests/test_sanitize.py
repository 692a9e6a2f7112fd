"""Foreign text as one printable line of bounded length."""

from __future__ import annotations

import pytest

from broker.core.sanitize import one_line, shortened


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("invalid_client: bad secret", "invalid_client: bad secret", id="plain"),
        pytest.param("a\n\tb   c \r\n", "a b c", id="whitespace"),
        pytest.param(
            "forged\nINFO broker.manager all good",
            "forged INFO broker.manager all good",
            id="no-second-log-line",
        ),
        pytest.param("\x1b[31mred\x1b[0m \x1b[2J\x1b[Hcleared", "red cleared", id="ansi-csi"),
        pytest.param(
            "\x1b]0;owned\x07title \x1b]8;;http://x\x1b\\link", "title link", id="ansi-osc"
        ),
        pytest.param("esc\x1bc reset \x1b", "esc reset", id="other-escapes"),
        pytest.param("nul\x00bell\x07del\x7fc1\x9b31m", "nul bell del c1 31m", id="controls"),
        pytest.param("evil\u202etxt.exe \u2066x\u2069", "evil txt.exe x", id="bidi-overrides"),
        pytest.param(
            "zero\u200bwidth line\u2028sep nb\u00a0sp",
            "zero width line sep nb sp",
            id="format-and-separators",
        ),
        pytest.param("grüße € 100%", "grüße € 100%", id="unicode-kept"),
        pytest.param("", "", id="empty"),
    ],
)
def test_one_line(text: str, expected: str) -> None:
    assert one_line(text) == expected
    assert one_line(expected) == expected


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        pytest.param("abc", 3, "abc", id="at-limit"),
        pytest.param("abcd", 3, "abc...", id="over"),
        pytest.param("", 3, "", id="empty"),
    ],
)
def test_shortened(text: str, limit: int, expected: str) -> None:
    assert shortened(text, limit) == expected
