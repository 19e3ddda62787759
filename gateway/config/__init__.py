"""Gateway configuration: the file schema, a loader with line numbers, and the runtime config."""

from gateway.config.loader import load
from gateway.config.runtime import GatewayConfig
from gateway.config.source import ConfigError, Problem

__all__ = ["ConfigError", "GatewayConfig", "Problem", "load"]
