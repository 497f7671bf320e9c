"""Session virtual actors: the pure core (events, features, detectors, policy, session) and
the SessionShard Ray actors that host it."""
