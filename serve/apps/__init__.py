"""The Ray Serve applications and what only they use: nudge writing with the LLM client and its circuit breaker, help-article retrieval, the recommender model."""
