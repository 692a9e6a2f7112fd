"""Re-reading the config file on SIGHUP without dropping tokens."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from broker.config import BrokerSettings, load_config
from broker.errors import ConfigError
from broker.manager import TokenManager

log = logging.getLogger("broker.reload")

# Keys that only take effect at start: changing them needs a restart.
RESTART_KEYS = ("host", "port", "log_level", "log_format")


async def reload_config(
    manager: TokenManager, path: Path, running: BrokerSettings
) -> BrokerSettings:
    """Load *path* and apply it; on any error keep *running* and say why.

    Providers whose settings did not change keep their tokens and schedules;
    added ones start, removed ones stop. Returns the settings now in force.
    """
    try:
        # Off the event loop: parsing thousands of providers takes seconds.
        new = await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        log.error("config reload rejected, the running config stays in force:\n%s", exc)
        manager.metrics.config_reloaded(ok=False)
        return running
    for key in RESTART_KEYS:
        if getattr(new, key) != getattr(running, key):
            log.warning("config reload: %s changed; it takes effect at the next restart", key)
    summary = await manager.update(new)
    manager.metrics.config_reloaded(ok=True)
    log.info(
        "config reloaded from %s: added %s, removed %s, changed %s, unchanged %s",
        path,
        summary["added"] or "none",
        summary["removed"] or "none",
        summary["changed"] or "none",
        len(summary["kept"]),
    )
    return new
