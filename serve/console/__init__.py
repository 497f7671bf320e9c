"""The operator console: pages, JSON API, /metrics and /healthz on their own port (aiohttp)."""
