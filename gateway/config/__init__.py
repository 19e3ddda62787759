"""Gateway configuration: typed models, a loader with line numbers, a watcher."""

from gateway.config.loader import load
from gateway.config.runtime import GatewayConfig
from gateway.config.source import ConfigError, Problem

__all__ = ["ConfigError", "GatewayConfig", "Problem", "load"]
