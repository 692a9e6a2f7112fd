"""The device authorization grant (RFC 8628), wire side: the device authorization request, its
answer, and the token request that polls with the device code. Pure: no I/O (the polling is
:mod:`broker.engine.browser_login`'s).

For a broker on a host where no browser can be opened or pasted from: the person enters a
short code at the identity provider's verification page, on any device, and the broker polls
the token endpoint at the server's ``interval`` (slowing down by 5 s when asked to).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from broker.core.errors import BrokerError

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

DEFAULT_INTERVAL = 5.0
"""RFC 8628 §3.2: the polling interval when the server names none."""

SLOW_DOWN_STEP = 5.0
"""RFC 8628 §3.5: seconds added to the interval at each ``slow_down``."""

PENDING = "authorization_pending"
SLOW_DOWN = "slow_down"
"""The token endpoint's answers while the person has not finished (RFC 8628 §3.5)."""


class DeviceAnswerError(BrokerError):
    """A device authorization answer that cannot be used (never quotes a code)."""


@dataclass(frozen=True)
class DeviceAuthorization:
    """RFC 8628 §3.2: what the person needs, and what the broker polls with."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def read_device_authorization(status: int, body: bytes) -> DeviceAuthorization:
    """The device authorization endpoint's answer; DeviceAnswerError when it is not one."""
    if status != 200:
        raise DeviceAnswerError(f"the device authorization endpoint answered HTTP {status}")
    try:
        data = json.loads(body)
    except ValueError:
        raise DeviceAnswerError("the device authorization answer is not JSON") from None
    if not isinstance(data, dict):
        raise DeviceAnswerError("the device authorization answer is not a JSON object")
    strings = {k: data.get(k) for k in ("device_code", "user_code", "verification_uri")}
    missing = [k for k, v in strings.items() if not isinstance(v, str) or not v]
    if missing:
        raise DeviceAnswerError(f"the device authorization answer lacks {', '.join(missing)}")
    complete = data.get("verification_uri_complete")
    return DeviceAuthorization(
        device_code=str(strings["device_code"]),
        user_code=str(strings["user_code"]),
        verification_uri=str(strings["verification_uri"]),
        verification_uri_complete=complete if isinstance(complete, str) and complete else None,
        expires_in=_seconds(data.get("expires_in"), 600.0),
        interval=_seconds(data.get("interval"), DEFAULT_INTERVAL),
    )


def _seconds(value: object, default: float) -> float:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float) and 0 < value < 86400:
        return float(value)
    if isinstance(value, str) and value.isdigit() and 0 < int(value) < 86400:
        return float(value)
    return default
