"""The HTML pages a person sees at a fake: the login form of an authorization request and the
device-verification form of RFC 8628.

Minimal on purpose: no scripts, no styles, no external resources (the Content-Security-Policy
says so, and a browser test can hold the fakes to it). Every input has a ``name`` and an
``id`` with a ``<label for=...>``, so a browser test fills ``#username``, ``#password`` and
``#user_code`` and clicks ``#allow``, ``#deny`` or ``#approve``. The buttons are submit
buttons named ``action``: pressing Enter in a field submits the first one (Allow, Approve).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from starlette.responses import Response

HTML = "text/html; charset=utf-8"

# What the pages need from a browser is nothing: no script, style, image or frame may load.
_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )


def _field(name: str, label: str, value: str = "", kind: str = "text") -> str:
    complete = {"username": "username", "password": "current-password"}.get(name, "off")
    shown = "" if kind == "password" else f' value="{escape(value)}"'
    return (
        f'<p><label for="{name}">{escape(label)}</label>\n'
        f'<input type="{kind}" id="{name}" name="{name}" autocomplete="{complete}"{shown}></p>\n'
    )


def _button(value: str, label: str) -> str:
    return f'<button type="submit" id="{value}" name="action" value="{value}">{label}</button>\n'


def _alert(error: str | None) -> str:
    return "" if error is None else f'<p role="alert" id="error">{escape(error)}</p>\n'


def html_response(text: str, status: int = 200) -> Response:
    """An HTML page with the pages' headers (no caching, no framing, nothing to load)."""
    return Response(text.encode("utf-8"), status, headers={"content-type": HTML, **_HEADERS})


def login_page(
    *,
    provider: str,
    action: str,
    hidden: Mapping[str, str],
    client: str,
    scope: str,
    username: str = "",
    error: str | None = None,
) -> str:
    """The login form of an authorization request; ``hidden`` carries the request itself."""
    carried = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">\n' for k, v in hidden.items()
    )
    asks = f" for <code>{escape(scope)}</code>" if scope else ""
    body = (
        f"<h1>Sign in to {escape(provider)}</h1>\n"
        f'<p><code id="client">{escape(client)}</code> asks for access{asks}.</p>\n'
        f"{_alert(error)}"
        f'<form method="post" action="{escape(action)}">\n{carried}'
        f"{_field('username', 'Username', username)}"
        f"{_field('password', 'Password', kind='password')}"
        f"<p>{_button('allow', 'Allow')}{_button('deny', 'Deny')}</p>\n</form>\n"
    )
    return _page(f"Sign in to {provider}", body)


def device_page(
    *,
    provider: str,
    action: str,
    user_code: str = "",
    username: str = "",
    error: str | None = None,
) -> str:
    """RFC 8628 §3.3: the page where the person enters the user code and approves or denies."""
    body = (
        f"<h1>Connect a device to {escape(provider)}</h1>\n"
        f"{_alert(error)}"
        f'<form method="post" action="{escape(action)}">\n'
        f"{_field('user_code', 'Code shown on your device', user_code)}"
        f"{_field('username', 'Username', username)}"
        f"{_field('password', 'Password', kind='password')}"
        f"<p>{_button('approve', 'Approve')}{_button('deny', 'Deny')}</p>\n</form>\n"
    )
    return _page(f"Connect a device to {provider}", body)


def message_page(title: str, message: str) -> str:
    """A page with a heading and one sentence: errors that must not redirect, outcomes."""
    return _page(title, f"<h1>{escape(title)}</h1>\n" + f'<p id="message">{escape(message)}</p>\n')
