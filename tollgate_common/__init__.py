"""What the gateway and the rate-limit service share: config problems and line-tracking
YAML, the file watcher, the metrics mechanism, and opening client connections."""
