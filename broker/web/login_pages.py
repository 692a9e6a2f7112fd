"""The two pages a person's browser sees at the broker: a login's outcome, and the page that
takes HIRO's UI flow's token out of the URL's fragment (the browser never sends a fragment,
so a script must). Nothing from elsewhere loads or runs on either."""

from __future__ import annotations

import html
import secrets

from fastapi.responses import HTMLResponse

from broker.web.answers import NO_STORE
from broker.web.security import LOGIN_FRAGMENT

FRAGMENT_PATH = LOGIN_FRAGMENT

_FRAGMENT_SCRIPT = """
const fragment = new URLSearchParams(location.hash.slice(1));
history.replaceState(null, "", location.pathname);
const say = (title, text) => {
  document.title = title;
  document.getElementById("title").textContent = title;
  document.getElementById("message").textContent = text;
};
fetch("FRAGMENT_PATH", {
  method: "POST",
  headers: {"Content-Type": "application/json"},
  body: JSON.stringify({accessoken: fragment.get("accessoken"), error: fragment.get("error")}),
}).then(r => r.json()).then(
  b => say(b.outcome === "ready" ? "Logged in" : "The login did not complete", b.message),
  () => say("The login did not complete", "the broker could not be reached"),
);
""".replace("FRAGMENT_PATH", FRAGMENT_PATH)


def result_page(title: str, text: str, status: int) -> HTMLResponse:
    """A page with nothing on it but *text*: no script, no style from anywhere."""
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        f"<h1 id=title>{html.escape(title)}</h1><p id=message>{html.escape(text)}</p></html>"
    )
    return HTMLResponse(body, status_code=status, headers=NO_STORE)


def fragment_page() -> HTMLResponse:
    """Where HIRO's UI flow lands: a script, allowed by a nonce of this answer alone, reads
    ``#accessoken=`` (or ``#error=``), wipes it from the address bar and history, and posts
    it to the broker on the same origin; the page shows how that went, never the token."""
    nonce = secrets.token_urlsafe(18)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Logging in</title>"
        "<h1 id=title>Logging in</h1><p id=message>Handing the login to the broker...</p>"
        f"<script nonce={nonce}>{_FRAGMENT_SCRIPT}</script></html>"
    )
    headers = {**NO_STORE, "Content-Security-Policy": policy, "Referrer-Policy": "no-referrer"}
    return HTMLResponse(body, headers=headers)
