"""Cluster plumbing: configuration, Redis (external or embedded), Ray start-up and the CLI."""
