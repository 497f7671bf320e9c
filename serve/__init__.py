"""The network edge (WebSocket gateway, HTTP endpoints, tracking client) and the Ray Serve
deployments (LLM nudges, recommendations)."""
