"""Turn a provider's config into the protocol that speaks to it.

The presets (``hiro``, ``aerion``, ``hub``) fill in each vendor's endpoint
paths and quirks so a user's config stays short; ``oauth2`` is the general form.

A preset's endpoint is its base ``url`` joined with the vendor's path by
:func:`join_url`; an ``oauth2`` ``token_url`` is used exactly as configured.
"""

from __future__ import annotations

from broker.config.providers import AerionProvider, HiroProvider, HubProvider, OAuth2Provider
from broker.protocols.authorize import AuthorizationEndpoint
from broker.protocols.base import TokenProtocol
from broker.protocols.hiro import REFRESH_REJECTED, HiroAppProtocol
from broker.protocols.oauth2 import OAuth2Protocol

ProviderConfig = HiroProvider | AerionProvider | HubProvider | OAuth2Provider


def join_url(base: str, *paths: str) -> str:
    """*base* with each of *paths* appended, one ``/`` between parts.

    The base may end in ``/`` and carry a path prefix (``https://x.youtrack.cloud/hub/``);
    each path may have slashes at either end or none (``/api/auth/6/``, ``api/auth/6``);
    empty paths are skipped. Nothing else is changed (config refuses a query on a base).
    """
    parts = [p.strip("/") for p in paths]
    return "/".join([base.rstrip("/"), *(p for p in parts if p)])


def build_protocol(config: ProviderConfig) -> TokenProtocol:
    """The protocol object for one configured provider."""
    if isinstance(config, HiroProvider):
        return _hiro(config)
    if isinstance(config, AerionProvider):
        return _aerion(config)
    if isinstance(config, HubProvider):
        return _hub(config)
    if isinstance(config, OAuth2Provider):
        return _oauth2(config)
    # A provider type added to the config but not here: fail loudly, never guess.
    msg = f"no protocol for provider type {config.type!r}"  # type: ignore[unreachable]
    raise TypeError(msg)


def _user_grant(config: HiroProvider | AerionProvider) -> str:
    return "password" if config.username is not None else "refresh_token"


def _hiro(config: HiroProvider) -> TokenProtocol:
    auth_base = join_url(config.url, config.auth_api)
    if config.flow in ("code", "ui"):
        # ui: never sends a request (a token from the fragment, no refresh token); the
        # same protocol says the provider cannot log in by itself.
        return OAuth2Protocol(
            label="hiro",
            token_url=join_url(auth_base, "token"),
            grant="authorization_code",
            client_id=config.client_id,
            client_secret=config.client_secret,
            client_auth=config.client_auth,
            refresh_rejected_statuses=REFRESH_REJECTED,
        )
    if config.flow == "app":
        return HiroAppProtocol(
            auth_base=auth_base,
            client_id=config.client_id,
            client_secret=config.client_secret,
            username=config.username,
            password=config.password,
        )
    return OAuth2Protocol(
        label="hiro",
        token_url=join_url(auth_base, "token"),
        grant=_user_grant(config),
        client_id=config.client_id,
        client_secret=config.client_secret,
        client_auth=config.client_auth,
        username=config.username,
        password=config.password,
        refresh_rejected_statuses=REFRESH_REJECTED,
    )


def _aerion(config: AerionProvider) -> TokenProtocol:
    # Aerion picks the tenant from a header on every token request, and wants
    # client_id and client_secret present (it does not check them).
    return OAuth2Protocol(
        label="aerion",
        token_url=join_url(config.url, "/oauth2/token"),
        grant=_user_grant(config),
        client_id=config.client_id,
        client_secret=config.client_secret,
        client_auth="client_secret_post",
        username=config.username,
        password=config.password,
        headers={config.tenant_header: config.company_url},
    )


def _hub(config: HubProvider) -> TokenProtocol:
    grant = config.grant
    if grant is None:
        if config.username is not None:
            grant = "password"
        elif config.refresh_token is not None:
            grant = "refresh_token"
        else:
            grant = "client_credentials"
    return OAuth2Protocol(
        label="hub",
        token_url=join_url(config.url, "/api/rest/oauth2/token"),
        grant=grant,
        client_id=config.client_id,
        client_secret=config.client_secret,
        client_auth="client_secret_basic",
        username=config.username,
        password=config.password,
        scope=config.scope,
        # Without access_type=offline Hub issues no refresh token for a password login.
        login_params={"access_type": "offline"} if grant == "password" else {},
    )


def _oauth2(config: OAuth2Provider) -> TokenProtocol:
    extra = dict(config.extra_params)
    if config.audience is not None:
        extra.setdefault("audience", config.audience)
    return OAuth2Protocol(
        # Empty until the issuer's metadata names it (broker.engine.browser_login).
        token_url=config.token_url or "",
        grant=config.grant,
        client_id=config.client_id,
        client_secret=config.client_secret,
        client_auth=config.client_auth,
        username=config.username,
        password=config.password,
        scope=config.scope,
        extra_params=extra,
        headers=dict(config.headers),
    )


def build_authorization(config: ProviderConfig) -> AuthorizationEndpoint | None:
    """The authorization endpoint of a provider a person logs in to in a browser
    (``grant: authorization_code``), or None. Its URL is empty when the issuer's metadata
    names it (:mod:`broker.engine.discovery`)."""
    if isinstance(config, OAuth2Provider) and config.grant == "authorization_code":
        return AuthorizationEndpoint(
            url=config.authorize_url or "",
            client_id=config.client_id or "",  # the config requires one
            scope=config.scope,
            prompt=config.prompt,
            params=dict(config.authorize_params),
        )
    if isinstance(config, HubProvider) and config.grant == "authorization_code":
        return AuthorizationEndpoint(
            url=join_url(config.url, "/api/rest/oauth2/auth"),
            client_id=config.client_id,
            scope=config.scope,
            prompt=config.prompt,
            # Without access_type=offline Hub issues no refresh token.
            params={"access_type": "offline", **config.authorize_params},
        )
    if isinstance(config, HiroProvider) and config.flow in ("code", "ui"):
        auth_base = join_url(config.url, config.auth_api)
        return AuthorizationEndpoint(
            # The seed spells the UI flow's address with its slash: <auth>/ui/?client_id=..
            url=join_url(auth_base, "authorize")
            if config.flow == "code"
            else join_url(auth_base, "ui") + "/",
            client_id=config.client_id,
            prompt=config.prompt,
            params=dict(config.authorize_params),
            style="code" if config.flow == "code" else "hiro_ui",
        )
    return None
