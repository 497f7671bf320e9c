"""Bring the Redis data of an earlier release to the key layout of this one, at start-up.

Two layouts came before this one (cluster/keys.py), and :func:`migrate` brings
either to it, so that a visitor whose session spans the upgrade keeps every
acknowledged event and resumes where it was:

* the first named a session's keys by its id alone (``{p}ev:{sid}``,
  ``{p}s:{sid}``, ...): :func:`scope_sessions_by_site` renames each such
  session's keys to site-scoped names, using the site its hash recorded, and
  sets the sid's owner;
* the second scoped them by site with a bare id (``{p}ev:{site}:{sid}``,
  ``{p}owner:{sid}``, ``{p}v:{site}:{vid}``, ``{p}ix:{site}:seen``,
  ``{p}model:live``, ...): :func:`tag_keys` renames them to their
  hash-tagged names (``{p}ev:{site}:{{sid}}``, ``{p}ix:{{site}}:seen``,
  ``{p}{{model}}:live``), so keys used together share a Redis Cluster slot.

When both have run, ``{p}layout`` records it and later starts skip the SCANs.

Limits: run it with the earlier release's gateways and shards stopped (the
stack runs it before it starts any), since a key an old process writes after
the SCAN passed keeps the old name. RENAME is atomic per key and keeps its
TTL; a key whose new name is already taken is left alone and logged. A
migration cut short is finished by the next start (``layout`` is set last).
Sessions whose hash has no site (none were written so) are left alone. The
SCANs walk the whole keyspace, once. Event-log entries keep the subject
reference they were sealed with (``site:subject``, field ``k``): readers take
both forms (:meth:`Keys.split_session_id`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis

from cluster.keys import SESSION_TTL_S, SUBJECT_FAMILIES, Keys

log = logging.getLogger("lifeline")

LAYOUT = "tagged"  # the value of {p}layout once this release's migration is done


def migrate(r: redis.Redis, keys: Keys) -> dict[str, int]:
    """Bring an earlier release's keys to this layout unless ``{p}layout`` says it is done.

    Returns what moved: ``sessions`` (first layout), ``keys`` (tagged), ``kept``
    (keys left alone: their tagged name was taken).
    """
    if r.get(keys.layout) == LAYOUT.encode():
        return {"sessions": 0, "keys": 0, "kept": 0}
    out = {"sessions": scope_sessions_by_site(r, keys), **tag_keys(r, keys)}
    r.set(keys.layout, LAYOUT)
    return out


async def await_layout(r: Any, keys: Keys, poll_s: float = 1.0) -> None:
    """Return once Redis holds this release's key layout (``{p}layout``); poll until it does.

    For a process that writes Redis but does not migrate it: a gateway worker,
    which Kubernetes runs apart from the control process that migrates. Writing
    this release's names before the migration would split a session's data
    between two names. ``r`` is a ``redis.asyncio`` client. Logs once why it
    waits. Limit: it cannot stop an earlier release's gateway, which knows
    nothing of the marker: stop those before the upgrade (cluster/kubernetes/README.md,
    "Upgrade").
    """
    told = False
    while await r.get(keys.layout) != LAYOUT.encode():
        if not told:
            log.warning(
                "waiting for Redis to be in this release's key layout: the control process "
                "(`lifeline up`) migrates it when it starts; stop the earlier release's "
                "gateways first"
            )
            told = True
        await asyncio.sleep(poll_s)


def tag_keys(r: redis.Redis, keys: Keys) -> dict[str, int]:
    """Rename every key of the bare-id layout to its hash-tagged name (cluster/keys.py).

    The subject families' keys and the owner keys get their id tagged; a
    site's explorer index its site (``ix:{site}:seen``); the model registry,
    site rules, shard set and operator accounts their group (``{model}:live``).
    Returns ``keys`` (renamed) and ``kept`` (left alone, the new name taken).
    """
    # The name part after the prefix -> the new name of the rest (None: not a key to rename).
    plans: dict[str, Callable[[str], str | None]] = {}
    for fam in SUBJECT_FAMILIES:
        plans.setdefault(
            fam.tag,
            lambda rest, fam=fam: (
                keys.family(fam, *Keys.split_session_id(rest)) if ":" in rest else None
            ),
        )
    plans["owner"] = lambda rest: keys.owner(rest) if ":" not in rest else None
    plans["ix"] = lambda rest: keys.session_index(*rest.split(":", 1)) if ":" in rest else None
    for group in (keys.model, keys.sites, keys.shards, keys.operator):
        plans[group("").removeprefix(keys.prefix).strip("{}:")] = group
    moved = kept = 0
    # One SCAN for every plan (a MATCH still walks the whole keyspace). Renamed keys may
    # come by again: their tagged names are skipped.
    for raw in r.scan_iter(match=f"{keys.prefix}*", count=1000):
        tag, _, rest = raw.decode()[len(keys.prefix) :].partition(":")
        rename = plans.get(tag)
        if rename is None or "{" in rest:
            continue  # another kind of key, or tagged already
        new = rename(rest)  # None: not this layout's (the first's, scope_sessions_by_site's)
        if new is None:
            continue
        if r.renamenx(raw, new):
            moved += 1
        else:
            kept += 1
            log.warning("kept a %s key: its tagged name is taken", tag)
    if moved:
        log.warning("renamed %d Redis keys to the hash-tagged layout (cluster/keys.py)", moved)
    return {"keys": moved, "kept": kept}


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
