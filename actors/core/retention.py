"""How long each kind of a site's data is kept: the defaults, and a site's own (its sites-file table).

Declared here, in the pure core, because a site's rules (actors/core/sites.py)
carry it; cluster/keys.py takes its TTL constants from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DAY_S = 86400
SESSION_TTL_S = 7 * DAY_S  # event logs and snapshots are kept a week for training export
# Consent records outlive the data they cover: they are the proof of a grant
# and the record of a withdrawal after an erasure. 400 days: a consent is
# asked again after 13 months (CNIL), and its proof is kept as long.
CONSENT_TTL_S = 400 * DAY_S
# A visitor's profile lasts longer than one visit's data: half a year without a visit.
PROFILE_TTL_S = 180 * DAY_S


@dataclass(frozen=True)
class Retention:
    """How long a site's data is kept, in seconds per kind (the sites file says days).

    ``events``: event logs; ``sessions``: session hashes, snapshots, owner
    keys, visitor records and session lists, explorer entries; ``decisions``:
    intervention records; ``profiles``: visitor profiles; ``consent``:
    consent records and erasure proofs; ``chats``: a session's help-chat
    memory (the visitor's own words, serve/apps/chat_memory.py). Each is
    applied as a TTL where its keys are written.
    """

    events: int = SESSION_TTL_S
    sessions: int = SESSION_TTL_S
    decisions: int = SESSION_TTL_S
    profiles: int = PROFILE_TTL_S
    consent: int = CONSENT_TTL_S
    chats: int = SESSION_TTL_S

    @classmethod
    def from_mapping(cls, table: Any) -> Retention:
        """From the sites file's ``retention`` table (days); ValueError names what is wrong."""
        if table is None:
            return cls()
        if not isinstance(table, dict):
            raise ValueError(f"retention must be a table of days, got {table!r}")
        unknown = set(table) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"retention has unknown kinds {sorted(unknown)}")
        out = {}
        for kind, days in table.items():
            if isinstance(days, bool) or not isinstance(days, (int, float)) or not days > 0:
                raise ValueError(f"retention.{kind} must be a positive number of days")
            if days > 36500:
                raise ValueError(f"retention.{kind}: at most 36500 days")
            out[kind] = max(1, round(days * DAY_S))
        return cls(**out)

    def days(self) -> dict[str, float]:
        """Each kind in days, as the sites file writes them (the console shows these)."""
        return {k: getattr(self, k) / DAY_S for k in self.__dataclass_fields__}
