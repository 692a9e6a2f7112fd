"""Hub's objects as the fake keeps and shows them: services (protocol doc §3.9) and the
``fields=`` projection of its REST answers.

A service registers with ``POST /api/rest/services?fields=id,secret`` and a JSON body whose
names are Hub's: ``name`` (required), ``homeUrl``, ``redirectUris``, ``applicationName``,
``vendor``, ``version``, ``trusted``, ``secret`` (else one is made up) and the flow switches
``clientCredentialsFlowEnabled``, ``resourceOwnerFlowEnabled``, ``authCodeFlowEnabled``,
``implicitFlowEnabled``. Unknown names are ignored, as Hub's other schema fields would be.
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any

# Hub's answer to a registration, e.g. {"id": "98071167-...", "secret": "eAUyKgVfhSbV"}.
_SECRET_ALPHABET = string.ascii_letters + string.digits
_FLAGS = {
    "clientCredentialsFlowEnabled": "client_credentials_enabled",
    "resourceOwnerFlowEnabled": "password_enabled",
    "authCodeFlowEnabled": "auth_code_enabled",
    "implicitFlowEnabled": "implicit_enabled",
}
_TEXTS = {"homeUrl": "home_url", "applicationName": "application_name", "vendor": "vendor"}


@dataclass
class HubService:
    """A service (OAuth client) registered in the fake Hub.

    ``redirect_uris`` empty means any loopback URI with a port (as in
    :func:`~broker.fakes.redirects.redirect_allowed`). An untrusted service is a public client
    for PKCE logins: ``client_id`` without the secret.
    """

    id: str
    secret: str
    trusted: bool = True
    client_credentials_enabled: bool = True
    password_enabled: bool = True
    name: str = "Broker demo service"
    redirect_uris: tuple[str, ...] = ()
    auth_code_enabled: bool = True
    implicit_enabled: bool = True
    home_url: str = ""
    application_name: str = ""
    vendor: str = ""
    version: str = ""


def new_secret() -> str:
    """A service secret shaped like Hub's (12 letters and digits)."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(12))


def service_from_json(body: Any) -> HubService | str:
    """The service a registration body describes, or why it is refused (a 400)."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        return "Service name is required"
    uris = body.get("redirectUris", [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        return "redirectUris must be a list of strings"
    secret = body.get("secret", new_secret())
    if not isinstance(secret, str) or not secret:
        return "secret must be a non-empty string"
    options: dict[str, Any] = {}
    for key, attr in _FLAGS.items():
        if key in body:
            if not isinstance(body[key], bool):
                return f"{key} must be true or false"
            options[attr] = body[key]
    for key, attr in (*_TEXTS.items(), ("version", "version")):
        if key in body:
            if not isinstance(body[key], str):
                return f"{key} must be a string"
            options[attr] = body[key]
    trusted = body.get("trusted", False)
    if not isinstance(trusted, bool):
        return "trusted must be true or false"
    return HubService(
        str(uuid.uuid4()), secret, trusted, name=name, redirect_uris=tuple(uris), **options
    )


def service_json(service: HubService) -> dict[str, Any]:
    """Every field of a service, by Hub's names."""
    body: dict[str, Any] = {"type": "service", "id": service.id, "name": service.name}
    body |= {"secret": service.secret, "trusted": service.trusted}
    body |= {"homeUrl": service.home_url, "redirectUris": list(service.redirect_uris)}
    body |= {key: getattr(service, attr) for key, attr in _TEXTS.items()}
    body |= {"version": service.version}
    body |= {key: getattr(service, attr) for key, attr in _FLAGS.items()}
    return body


def project(body: dict[str, Any], fields: str | None, default: tuple[str, ...]) -> dict[str, Any]:
    """Hub's ``?fields=a,b(c)``, loosely: the named top-level keys (``default`` without it)."""
    wanted = {f.split("(", 1)[0].strip() for f in fields.split(",")} if fields else set(default)
    return {k: v for k, v in body.items() if k in wanted}
