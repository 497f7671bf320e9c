"""Visitors' data rights: erasure (GDPR art. 17, 21) and access (art. 15); docs/RIGHTS.md."""
