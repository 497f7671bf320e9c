"""The network edge: the WebSocket gateway, its sans-I/O protocol and wire framing, the event store it appends to, and the HTTP side (client script, beacon, demo, health, metrics)."""
