"""The session shard shell: the SessionShard Ray actor around the core's host, its Redis records, and the gateway-to-shard link."""
