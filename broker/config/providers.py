"""The providers' part of the configuration: each provider type's model, the URL rules
their endpoints follow, and the refresh policy (``refresh:``) they may override.

:mod:`broker.config.settings` puts them together with the rest of the settings and reads the file;
modules that need a provider's settings but not the whole config import them from here.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from broker.config.problems import FieldProblem
from broker.config.secrets import Indirect, OptionalIndirect, OptionalSecret, Secret
from broker.config.sinks import SinkConfig
from broker.config.yamlfile import KeyPath
from broker.core.addresses import is_loopback_address
from broker.policy.schedule import RefreshSettings

GrantType = Literal["password", "client_credentials", "refresh_token", "authorization_code"]
ClientAuth = Literal["client_secret_basic", "client_secret_post"]


def _http_url(value: str) -> str:
    # The value is never echoed: it may carry a password.
    if not re.match(r"^https?://[^/\s?#]+", value):
        msg = "must be an http:// or https:// URL"
        raise ValueError(msg)
    if "@" in urlsplit(value).netloc:
        # httpx would send it as Basic credentials in place of the configured client
        # authentication, and log the URL; broker check would print it.
        msg = (
            "must not contain a user name or password (user:password@); put credentials"
            " in client_id/client_secret or username/password, from {env:} or {file:}"
        )
        raise ValueError(msg)
    return value


def cleartext_host(url: str) -> str | None:
    """The host of a plain ``http://`` *url* that is not this host, else None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not is_loopback_address(host):
        return host
    return None


def _base_url(value: str) -> str:
    if "?" in value or "#" in value:
        msg = "must not have a query or fragment: the broker appends endpoint paths to it"
        raise ValueError(msg)
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
"""A full endpoint URL, used exactly as written (path, trailing slash and query)."""

BaseUrl = Annotated[str, AfterValidator(_http_url), AfterValidator(_base_url)]
"""A URL that endpoint paths are appended to (:func:`broker.protocols.presets.join_url`);
kept as written, a trailing slash or path prefix included."""

OriginUrl = Annotated[str, AfterValidator(_http_url), AfterValidator(lambda v: v.rstrip("/"))]
"""A URL sent as a header value that names a site (Aerion's ``companyurl``/``Origin``).
A trailing slash is dropped: an Origin header has none, and ``https://acme.aerion.app/``
names the same tenant as ``https://acme.aerion.app``."""


class _ProviderBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float = Field(10.0, gt=0, le=300)
    """Seconds to wait for the identity provider to connect and answer."""
    default_expires_in: float = Field(3600.0, gt=0)
    """Lifetime assumed when a response gives none (and the token is not a JWT with exp)."""
    refresh: RefreshSettings | None = None
    """Overrides the top-level refresh settings for this provider."""
    sink: SinkConfig | None = None
    """Also write each new access token to this file (atomically)."""
    sinks: tuple[SinkConfig, ...] = ()
    """Also write each new access token to each of these files (atomically); one that
    cannot be written does not stop the others. ``sink`` or ``sinks``, not both."""
    allow_insecure_http: bool = False
    """Allow a plain ``http://`` token endpoint on another host: secrets and tokens then
    cross the network unencrypted (logged as a warning at every start). Loopback
    ``http://`` is always allowed."""

    @model_validator(mode="after")
    def _sink_or_sinks(self) -> Self:
        if self.sink is not None and self.sinks:
            msg = (
                "sink and sinks are both given; use one: a single sink: mapping, or move it"
                " into the sinks: list"
            )
            raise FieldProblem(("sinks",), msg)
        return self

    def sink_configs(self) -> list[tuple[KeyPath, SinkConfig]]:
        """Each configured sink with its key under the provider: ``("sink",)`` or
        ``("sinks", "0")``, ``("sinks", "1")`` ..., in the order written."""
        if self.sink is not None:
            return [(("sink",), self.sink)]
        return [(("sinks", str(index)), sink) for index, sink in enumerate(self.sinks)]

    @model_validator(mode="after")
    def _no_cleartext_to_other_hosts(self) -> Self:
        key = "token_url" if "token_url" in type(self).model_fields else "url"
        host = cleartext_host(str(getattr(self, key)))
        if host is not None and not self.allow_insecure_http:
            msg = (
                f"plain http:// to {host} would send secrets and tokens unencrypted over the"
                " network; use https://, or set allow_insecure_http: true on this provider"
                " (for a trusted network only)"
            )
            raise FieldProblem((key,), msg)
        return self


class _UserCredentials(BaseModel):
    username: OptionalIndirect = None
    password: OptionalSecret = None
    refresh_token: OptionalSecret = None
    """A refresh token to start from (an SSO login's, for instance); rotated ones replace it."""


class _BrowserLogin(BaseModel):
    """How a person logs in once in a browser (``grant: authorization_code``)."""

    redirect_uri: HttpUrl | None = None
    """Where the identity provider sends the browser back: the broker's
    ``/login/callback``. Default ``http://127.0.0.1:<port>/login/callback``; set it for a
    port-forwarded or remote setup (it must reach this broker's ``/login/callback``)."""
    prompt: str | None = None
    """Sent as ``prompt`` (``login``, ``consent``, ``select_account``...)."""
    authorize_params: dict[str, str] = Field(default_factory=dict)
    """More query parameters for the authorization request (``access_type``, ...)."""


class HiroProvider(_ProviderBase, _UserCredentials, _BrowserLogin):
    """HIRO (arago) Auth API v6: JSON ``/app`` + ``/refresh``, or the OAuth2 ``/token`` endpoint."""

    type: Literal["hiro"]
    url: BaseUrl
    auth_api: str = "/api/auth/6"
    """Path prefix of the auth API: ``/api/auth/6``, ``/api/auth/6.6`` ... (slashes
    at either end optional)."""
    flow: Literal["app", "token", "code", "ui"] = "app"
    """``app``: JSON password login on ``/app``, refresh on ``/refresh``.
    ``token``: form-encoded OAuth2 on ``/token`` (auth API 6.6).
    ``code``: a person logs in in a browser (``broker login``): auth API 6.6's
    ``/authorize`` with PKCE, then ``/token``.
    ``ui``: HIRO's UI (implicit) flow, ``<auth>/ui/``: the browser comes back with the
    token in the URL's fragment. No refresh token: served until it expires, then a new
    ``broker login`` is needed (prefer ``code`` where auth API 6.6 is available)."""
    client_id: Indirect
    client_secret: Secret
    client_auth: ClientAuth = "client_secret_basic"
    """How the ``token`` flow sends the client credentials (the ``app`` flow sends JSON)."""

    @model_validator(mode="after")
    def _needs_credentials(self) -> HiroProvider:
        if self.flow not in ("code", "ui"):  # those logins are a person's, in a browser
            _require_user_or_refresh_token(self)
        return self


class AerionProvider(_ProviderBase, _UserCredentials):
    """Aerion: password or refresh-token grant on ``/oauth2/token``, tenant chosen by a header."""

    type: Literal["aerion"]
    url: BaseUrl = "https://api.aerion.app"
    company_url: OriginUrl
    """Your company's address, e.g. ``https://acme.aerion.app``; names the tenant."""
    tenant_header: Literal["companyurl", "origin"] = "companyurl"
    # Aerion does not validate the client pair, but both must be present and
    # the client id must look like ^[a-z0-9-_]{3,40}$.
    client_id: Indirect = "credential-broker"
    client_secret: Secret = SecretStr("public")

    @model_validator(mode="after")
    def _needs_credentials(self) -> AerionProvider:
        _require_user_or_refresh_token(self)
        return self


class HubProvider(_ProviderBase, _UserCredentials, _BrowserLogin):
    """JetBrains Hub: client credentials, password (offline access) or refresh-token grant."""

    type: Literal["hub"]
    url: BaseUrl
    """The Hub URL, e.g. ``https://hub.example.com`` or ``https://x.youtrack.cloud/hub``."""
    client_id: Indirect
    """The Hub service id."""
    client_secret: Secret
    scope: str | None = None
    """Space-separated Hub service ids (``0-0-0-0-0`` is Hub itself)."""
    grant: GrantType | None = None
    """Default: ``password`` with a username, ``refresh_token`` with only a refresh
    token, else ``client_credentials``. ``authorization_code``: a person logs in in a
    browser (``broker login``) at ``<url>/api/rest/oauth2/auth``, with
    ``access_type=offline`` for a refresh token."""

    @model_validator(mode="after")
    def _grant_matches_credentials(self) -> HubProvider:
        _check_grant(self, self.grant)
        return self


class OAuth2Provider(_ProviderBase, _UserCredentials, _BrowserLogin):
    """Any RFC 6749 token endpoint."""

    type: Literal["oauth2"]
    token_url: HttpUrl | None = None
    """The token endpoint; with ``grant: authorization_code`` and an ``issuer``, found
    through the issuer's metadata when left out."""
    grant: GrantType
    authorize_url: HttpUrl | None = None
    """The authorization endpoint (``grant: authorization_code``); found through the
    ``issuer``'s metadata when left out."""
    device_authorization_url: HttpUrl | None = None
    """The device authorization endpoint (RFC 8628) for ``broker login --device``; found
    through the ``issuer``'s metadata when left out."""
    issuer: HttpUrl | None = None
    """The identity provider's issuer: its metadata (``/.well-known/openid-configuration``,
    else RFC 8414's ``/.well-known/oauth-authorization-server``) names the authorization
    endpoint and the keys an ``id_token`` is checked against."""
    client_id: OptionalIndirect = None
    client_secret: OptionalSecret = None
    client_auth: ClientAuth = "client_secret_basic"
    scope: str | None = None
    audience: str | None = None
    extra_params: dict[str, str] = Field(default_factory=dict)
    """More form parameters sent with every token request (``resource``, ...)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """More HTTP headers sent with every token request."""

    @model_validator(mode="after")
    def _grant_matches_credentials(self) -> OAuth2Provider:
        _check_grant(self, self.grant)
        if self.token_url is None and (self.grant != "authorization_code" or self.issuer is None):
            raise FieldProblem(
                ("token_url",), "is required (only a person's login can find it from its issuer)"
            )
        if self.client_secret is not None and self.client_id is None:
            msg = "client_secret is set but client_id is not"
            raise ValueError(msg)
        if self.grant == "client_credentials" and self.client_id is None:
            msg = "grant client_credentials needs client_id and client_secret"
            raise ValueError(msg)
        if self.grant == "authorization_code":
            if self.client_id is None:
                msg = (
                    "grant authorization_code needs client_id (and client_secret, if confidential)"
                )
                raise ValueError(msg)
            if self.authorize_url is None and self.issuer is None:
                msg = "grant authorization_code needs authorize_url, or issuer to discover it"
                raise ValueError(msg)
            if "openid" in (self.scope or "").split() and self.issuer is None:
                msg = (
                    "scope openid returns an id_token, which is checked against the issuer's"
                    " keys: set issuer"
                )
                raise FieldProblem(("issuer",), msg)
        for key in ("authorize_url", "issuer"):
            host = cleartext_host(str(getattr(self, key) or ""))
            if host is not None and not self.allow_insecure_http:
                msg = (
                    f"plain http:// to {host} would let the login's code and tokens cross the"
                    " network unencrypted; use https://, or set allow_insecure_http: true"
                )
                raise FieldProblem((key,), msg)
        return self


ProviderConfig = Annotated[
    HiroProvider | AerionProvider | HubProvider | OAuth2Provider,
    Field(discriminator="type"),
]
PROVIDER_TYPES = ("hiro", "aerion", "hub", "oauth2")


def _require_user_or_refresh_token(p: _UserCredentials) -> None:
    has_user = p.username is not None and p.password is not None
    if (p.username is None) != (p.password is None):
        missing = "password" if p.password is None else "username"
        msg = f"username and password go together; {missing} is missing"
        raise ValueError(msg)
    if not has_user and p.refresh_token is None:
        msg = "needs username and password, or a refresh_token to start from"
        raise ValueError(msg)


def _check_grant(p: _UserCredentials, grant: GrantType | None) -> None:
    if grant == "password" and (p.username is None or p.password is None):
        msg = "grant password needs username and password"
        raise ValueError(msg)
    if grant == "refresh_token" and p.refresh_token is None:
        msg = "grant refresh_token needs a refresh_token to start from"
        raise ValueError(msg)
