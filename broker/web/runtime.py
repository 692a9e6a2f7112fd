"""What the HTTP layer's two paths share: the guard, the metrics, the audit trail, and
what the app's lifespan builds (the refresh engine, the reloader).

:func:`broker.web.app.create_app` makes one :class:`Runtime` and hands it to the FastAPI routes
and to the fast path (:mod:`broker.web.fastpath`); neither looks anything up in dynamic state.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.engine.manager import TokenManager
from broker.ops.audit import AuditTrail
from broker.ops.metrics import Metrics
from broker.web.reload import Reloader
from broker.web.security import Guard


@dataclass
class Runtime:
    guard: Guard
    metrics: Metrics
    audit: AuditTrail
    manager: TokenManager | None = None
    """The refresh engine while the app's lifespan runs; None before and after."""
    reloader: Reloader | None = None
    """The SIGHUP reloader, when the app was given a config file to reload."""

    def engine(self) -> TokenManager:
        """The refresh engine; raises RuntimeError when the lifespan is not running."""
        if self.manager is None:
            msg = "the broker's lifespan is not running (serve the app with lifespan on)"
            raise RuntimeError(msg)
        return self.manager

    def served(self, client: str, provider: str) -> None:
        """The audit line and the metric for one token handed out (never the token)."""
        self.audit.token_served(client, provider)
        self.metrics.token_served(provider, client)
