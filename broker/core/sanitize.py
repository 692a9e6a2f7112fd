"""Foreign text made fit to show: one printable line of bounded length.

An identity provider's error text ends up in log lines, ``/providers`` and the
503 body of ``GET /token``. It must not be able to move a terminal's cursor or
colour it (ANSI escapes), forge a log line (line breaks), reorder what a reader
sees (bidirectional overrides) or fill the status page.
"""

from __future__ import annotations

import re
from typing import Final

_ESCAPE: Final = re.compile(
    r"\x1b(?:"
    r"\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor movement
    r"|\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|[ -/]*[0-~]"  # the others: ESC, any intermediates, a final character
    r")?"
)


def one_line(text: str) -> str:
    """*text* with escape sequences and non-printable characters (controls, line and
    paragraph separators, format characters such as bidirectional overrides) turned into
    spaces, and every run of whitespace made one space."""
    text = _ESCAPE.sub(" ", text)
    if not text.isprintable():
        text = "".join(char if char.isprintable() else " " for char in text)
    return " ".join(text.split())


def shortened(text: str, limit: int) -> str:
    """*text* cut to *limit* characters, with "..." to say so."""
    return text if len(text) <= limit else text[:limit] + "..."
