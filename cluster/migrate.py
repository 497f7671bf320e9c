"""Bring the Redis data of an earlier release to the key layout of this one, at start-up.

Releases before site-scoped keys named a session's keys by its id alone
(``{p}ev:{sid}``, ``{p}s:{sid}``, ...). This release scopes them by site
(cluster/keys.py). :func:`scope_sessions_by_site` renames each old session's
keys to the new names, using the site its session hash recorded, and sets
the sid's owner, so that a visitor whose session spans the upgrade keeps
every acknowledged event and resumes where it was.

Limits: one SCAN over the old session hashes at each start (it finds
nothing once migrated); RENAME is atomic per key, and the session hash is
renamed last, so a migration cut short is picked up by the next start.
Sessions whose hash has no site (none were written so) are left alone.
"""

from __future__ import annotations

import logging

import redis

from cluster.keys import SESSION_TTL_S, Keys

log = logging.getLogger("lifeline")


def scope_sessions_by_site(r: redis.Redis, keys: Keys) -> int:
    """Rename the keys of sessions stored under the old layout; returns how many were moved."""
    old_hash = f"{keys.prefix}s:"
    moved = 0
    for raw in r.scan_iter(match=f"{old_hash}*", count=1000, _type="hash"):
        key = raw.decode()
        sid = key[len(old_hash) :]
        if ":" in sid:  # already scoped: s:{site}:{sid}
            continue
        site_raw = r.hget(key, "site")
        if site_raw is None:
            continue
        site = site_raw.decode()
        old = {
            f"{keys.prefix}ev:{sid}": keys.events(site, sid),
            f"{keys.prefix}snap:{sid}": keys.snapshot(site, sid),
            f"{keys.prefix}ivs:{sid}": keys.interventions_of(site, sid),
        }
        for src, dst in old.items():
            if r.exists(src):
                r.rename(src, dst)
        r.set(keys.owner(sid), site, ex=SESSION_TTL_S, nx=True)
        r.rename(key, keys.session(site, sid))  # last: its absence marks the session done
        moved += 1
    if moved:
        log.warning("moved %d sessions' Redis keys to the site-scoped layout", moved)
    return moved
