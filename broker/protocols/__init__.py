"""Provider wire protocols: request builders and response parsers, no I/O."""

from broker.protocols.base import TokenProtocol
from broker.protocols.presets import build_protocol

__all__ = ["TokenProtocol", "build_protocol"]
