"""``store``: where tokens live beyond one broker's memory (:mod:`broker.engine.store`).

``backend: local`` (the default, and what no ``store`` key means) is one broker alone: its
memory and ``state_dir``. ``backend: redis`` is a Redis server that several replicas
configured with the same logins share (:mod:`broker.engine.redis_store`): one of them at a
time refreshes a provider's token, and the others take what it obtained.

A model of its own, so that the config imports no Redis client.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from broker.config.problems import FieldProblem
from broker.config.secrets import OptionalSecret

REDIS_SCHEMES = ("redis", "rediss")


def _redis_url(value: SecretStr | None) -> SecretStr | None:
    # The value is never echoed: it may hold a password.
    if value is None:
        return None
    try:
        parts = urlsplit(value.get_secret_value())
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        msg = "not a URL (expected redis://[:password@]host[:port][/db] or rediss://...)"
        raise ValueError(msg) from None
    if parts.scheme not in REDIS_SCHEMES:
        msg = "must be a redis:// or rediss:// (TLS) URL"
        raise ValueError(msg)
    if not parts.hostname:
        msg = "names no host (expected redis://[:password@]host[:port][/db])"
        raise ValueError(msg)
    db = parts.path.strip("/")
    if db and not db.isdigit():
        msg = "the path must be a database number (/0, /1 ...)"
        raise ValueError(msg)
    return value


RedisUrl = Annotated[OptionalSecret, AfterValidator(_redis_url)]
"""A Redis URL: a secret (it may hold a password), from inline text, env or file."""


class StoreSettings(BaseModel):
    """``store``: this broker alone (``local``) or replicas sharing a Redis (``redis``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "redis"] = "local"
    """``local``: memory and ``state_dir``; ``redis``: the Redis server at ``url``."""
    url: RedisUrl = None
    """``redis://[user:password@]host[:port][/db]``, or ``rediss://`` for TLS. A secret:
    ``{env: BROKER_REDIS_URL}`` or ``{file: /run/secrets/redis_url}``."""
    key_prefix: str = Field("broker:", min_length=1, max_length=100, pattern=r"^[!-~]+$")
    """Prepended to every key the broker writes (``broker:<provider>:refresh``...): brokers
    with the same prefix share their logins; give unrelated deployments their own."""
    lease_ttl: float = Field(10.0, ge=0.5, le=300)
    """Seconds a broker's lease on a provider lasts without renewal: while it refreshes the
    lease is renewed every third of this, so a broker that dies in the middle holds the
    others back for at most this long."""

    @model_validator(mode="after")
    def _url_for_redis(self) -> StoreSettings:
        if self.backend == "redis" and self.url is None:
            raise FieldProblem(("url",), "required with backend: redis")
        if self.backend == "local" and self.url is not None:
            msg = "only used with backend: redis (set backend: redis, or remove url)"
            raise FieldProblem(("url",), msg)
        return self
