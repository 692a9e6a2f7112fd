"""File modes in the config (``mode: 0640``), read as chmod reads them: octal.

YAML 1.2 reads ``0640`` as the decimal 640 (:class:`broker.config.yamlfile.ZeroPaddedInt`
remembers the leading zero), which is not what whoever wrote it meant. :data:`FileMode`
accepts ``0640``, ``0o640``, the string ``"0640"`` and a decimal int (``416``), and refuses
anything outside 0-0777 with a hint when the digits look like an octal mode without its 0.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from broker.config.yamlfile import ZeroPaddedInt

_OCTAL = re.compile(r"(?:0o?)?([0-7]{1,4})")


def _parse_mode(value: object) -> object:
    if isinstance(value, bool):
        msg = "must be a file mode such as 0600 or '0640'"
        raise ValueError(msg)
    if isinstance(value, ZeroPaddedInt):
        value = str(int(value))
    if isinstance(value, str):
        match = _OCTAL.fullmatch(value.strip())
        if match is None:
            msg = "must be an octal file mode such as '0600' or '0o640'"
            raise ValueError(msg)
        return int(match.group(1), 8)
    return value


def _check_mode(value: int) -> int:
    if 0 <= value <= 0o777:
        return value
    hint = ""
    digits = str(value)
    if len(digits) <= 4 and set(digits) <= set("01234567") and int(digits, 8) <= 0o777:
        # YAML read 640 as decimal: the octal mode needs a leading 0.
        hint = f" ({value} is decimal; write 0{value} or '0{value}' for octal)"
    msg = f"must be a file mode between 0 and 0777{hint}"
    raise ValueError(msg)


FileMode = Annotated[int, BeforeValidator(_parse_mode), AfterValidator(_check_mode)]
"""Permission bits, as for chmod."""
