"""Encryption at rest of the event log: one data key per subject, wrapped by a master key.

What it is for: erasure that reaches every copy. Each logged run of events
(the ``ev`` field of a stream entry, serve/edge/store.py) is sealed with
AES-256-GCM under its *subject's* data key: the visitor's (``site:vid``)
when the session has a visitor id, else the session's own (``site:sid``).
The data key lives in Redis only, at ``Keys.data_key(site, subject)``,
wrapped (AES-GCM) by a master key that never enters Redis
(``LIFELINE_DATA_KEY``). Deleting a subject's data key makes every entry
sealed under it unreadable wherever it was copied: exports
(training/sealed_export.py), training sets, Redis backups.

This module owns sealing and unsealing; it is storage, not the pure core:

* :class:`MasterKeys`: the master keys from the setting (the first wraps,
  all unwrap: rotation), wrap and unwrap of data keys;
* :class:`Sealer`: one subject's key, held by the gateway per session
  (one AES-GCM object per session, a 12-byte nonce per entry from
  :func:`next_nonce`);
* :class:`Opener`: a reader's cache of unwrapped keys for one pass
  (recovery, the console, export, training), with counts of what it could
  not open.

Formats. A wrapped data key: ``b"\\x01" + key id (4 bytes) + nonce (12) +
AES-GCM(master, data key, aad="lifeline-dk|" + site)``; the key id is a
digest of the master secret, so rotation needs no named ids. A sealed entry:
``ev`` = nonce (12) + ciphertext + tag (16), and field ``k`` = the subject
reference ``site:subject``, so a reader knows which key opens it; an entry
without ``k`` is plaintext (logged with ``LIFELINE_ENCRYPT_AT_REST=0``).

Limits: a data key is created on a session's hello (SET NX, so two
gateways racing for one subject get the same key) and expires
``DATA_KEY_TTL_S`` after its subject's last hello (or last 64 events), a
day after the logs it covers; after that its entries are unreadable, which
is retention at work, not a loss. Entries carry no key generation: an entry
sealed under a key that was deleted and then created anew fails its tag
and counts as unreadable.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cluster.keys import Keys
from cluster.redis_cluster import mget, mget_sync

WRAP_VERSION = b"\x01"
KEY_ID_BYTES = 4
NONCE_BYTES = 12
DATA_KEY_BYTES = 32  # AES-256
_NONCE_MASK = (1 << 8 * NONCE_BYTES) - 1

# The nonces of every AES-GCM call of this process: a counter from a random 96-bit
# start, drawn once per process. Why not os.urandom per entry: it was a third of the
# cost of sealing one entry (a system call, ~0.7-1.4 us on the development machine,
# loadtests/bench_sealing.py). Why it is safe (GCM must never see one nonce twice
# under one key, and one subject's data key is used by every process that seals for
# it: gateways, beacons, restarts): within a process the counter does not repeat
# before 2**96 calls; two processes' runs of nonces [s, s + n) overlap only if their
# random starts fall within n of each other, so P processes sealing M entries in all
# collide with probability at most P * M / 2**96, never worse than a fresh random
# nonce per entry (about M**2 / 2**97: P <= M). E.g. 10,000 processes and 10**12
# entries: ~1e-13. Sequential nonces are GCM's deterministic construction (NIST SP
# 800-38D 8.2.1); each 96-bit nonce owns its own 2**32 counter blocks, so neighbours
# never share a keystream block. The start is drawn again in a forked child
# (os.register_at_fork), so a fork does not repeat its parent's nonces; next() on an
# itertools.count is atomic under the GIL (a free-threaded build would need a lock).
# Not covered: one process memory image resumed twice (a CRIU checkpoint or a VM's
# memory snapshot restored while the original runs on) repeats its counter; Lifeline
# never checkpoints processes.
_nonces: Iterator[int] = itertools.count(int.from_bytes(os.urandom(NONCE_BYTES), "big"))


def _restart_nonces() -> None:
    global _nonces
    _nonces = itertools.count(int.from_bytes(os.urandom(NONCE_BYTES), "big"))


os.register_at_fork(after_in_child=_restart_nonces)


def next_nonce() -> bytes:
    """A 12-byte AES-GCM nonce no other call in this process gets (see ``_nonces``)."""
    return (next(_nonces) & _NONCE_MASK).to_bytes(NONCE_BYTES, "big")


class KeyUnavailable(Exception):
    """A wrapped data key that no configured master key opens (unknown id, or tampered)."""


def _s(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


class MasterKeys:
    """The master keys of ``LIFELINE_DATA_KEY``: comma-separated secrets, the first one current.

    The current key wraps new data keys; every listed key unwraps, so a
    rotation is: put the new secret first, keep the old one after it,
    restart, run ``lifeline datakeys rewrap``, then drop the old secret.
    Each secret is stretched to an AES-256 key with HKDF-SHA256, so any long
    random string will do. The repr and pickle never show a secret in logs
    (pickling does carry them: to Ray actors, inside the cluster).
    """

    def __init__(self, spec: str) -> None:
        secrets = [s.strip() for s in spec.split(",") if s.strip()]
        if not secrets:
            raise ValueError("LIFELINE_DATA_KEY holds no key")
        self._spec = spec
        self._by_id: dict[bytes, AESGCM] = {}
        self.ids: list[bytes] = []
        for secret in secrets:
            kid = hmac.new(secret.encode(), b"lifeline data-key id", hashlib.sha256).digest()
            kid = kid[:KEY_ID_BYTES]
            kek = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"lifeline data-key wrap"
            ).derive(secret.encode())
            self._by_id[kid] = AESGCM(kek)
            self.ids.append(kid)
        self.current = self.ids[0]

    def __repr__(self) -> str:
        return f"MasterKeys(ids={[k.hex() for k in self.ids]})"

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (MasterKeys, (self._spec,))

    @staticmethod
    def _aad(site: str) -> bytes:
        return b"lifeline-dk|" + site.encode()

    def wrap(self, site: str, data_key: bytes) -> bytes:
        """``data_key`` wrapped by the current master key, bound to ``site``."""
        nonce = next_nonce()
        sealed = self._by_id[self.current].encrypt(nonce, data_key, self._aad(site))
        return WRAP_VERSION + self.current + nonce + sealed

    def new_wrapped(self, site: str) -> bytes:
        """A fresh random data key, wrapped: the candidate a hello offers (SET NX)."""
        return self.wrap(site, os.urandom(DATA_KEY_BYTES))

    @staticmethod
    def key_id(wrapped: bytes) -> bytes:
        """The id of the master key that wrapped ``wrapped``."""
        return wrapped[1 : 1 + KEY_ID_BYTES]

    def unwrap(self, site: str, wrapped: bytes) -> bytes:
        """The data key inside ``wrapped``; :class:`KeyUnavailable` if no master key opens it."""
        if len(wrapped) < 1 + KEY_ID_BYTES + NONCE_BYTES + 16 or wrapped[:1] != WRAP_VERSION:
            raise KeyUnavailable("not a wrapped data key")
        aead = self._by_id.get(self.key_id(wrapped))
        if aead is None:
            raise KeyUnavailable(
                f"wrapped by master key {self.key_id(wrapped).hex()}, which LIFELINE_DATA_KEY lacks"
            )
        start = 1 + KEY_ID_BYTES
        try:
            return aead.decrypt(
                wrapped[start : start + NONCE_BYTES],
                wrapped[start + NONCE_BYTES :],
                self._aad(site),
            )
        except InvalidTag:
            raise KeyUnavailable(
                "wrapped data key does not open (tampered, or another site's)"
            ) from None

    def unwrap_ref(self, ref: str | bytes, wrapped: bytes) -> bytes:
        """:meth:`unwrap` for subject reference ``ref`` (``site:subject``)."""
        return self.unwrap(Keys.split_session_id(_s(ref))[0], wrapped)

    def sealer(self, ref: str | bytes, wrapped: bytes) -> Sealer:
        """The :class:`Sealer` of subject ``ref`` (``site:subject``) from its wrapped key."""
        return Sealer(_s(ref), self.unwrap_ref(ref, wrapped))


class Sealer:
    """One subject's data key, unwrapped: seals one session's runs of events on a gateway.

    Made once per session (on its hello), never per event: per entry the
    cost is a 12-byte nonce from the process's counter (``_nonces``) and the
    AES-GCM call (``cryptography`` copies the key's OpenSSL cipher context
    for each call, and holds the GIL through it: a thread would not help).
    """

    __slots__ = ("ref", "_encrypt")

    def __init__(self, ref: str, data_key: bytes) -> None:
        self.ref = ref  # "site:subject": the entry's ``k`` field
        self._encrypt = AESGCM(data_key).encrypt

    def seal(self, payload: bytes) -> bytes:
        """``payload`` sealed: nonce (12) + ciphertext + tag (16)."""
        nonce = (next(_nonces) & _NONCE_MASK).to_bytes(NONCE_BYTES, "big")  # next_nonce(), inlined
        return nonce + self._encrypt(nonce, payload, None)


def open_sealed(aead: AESGCM, blob: bytes) -> bytes | None:
    """The plaintext of one sealed ``ev`` blob, or None when it does not open."""
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
    except (InvalidTag, ValueError):
        return None


class Opener:
    """Opens sealed log entries with the data keys Redis holds now, for one reading pass.

    Keys are fetched once per subject (``load`` / ``aload``, one MGET) and
    kept for the pass: make a new Opener for each pass so an erasure is
    seen. A key that is gone (erased, expired) or that no master key unwraps
    leaves its entries unreadable; ``unreadable`` counts such entries and
    ``dropped_sessions`` is for the caller to count sessions it left out.
    """

    def __init__(self, keys: Keys, master: MasterKeys | None) -> None:
        self.keys = keys
        self.master = master
        self._keys: dict[str, AESGCM | None] = {}
        self.unreadable = 0
        self.dropped_sessions = 0
        self.unopenable_keys = 0  # present in Redis, but no configured master key opens them

    def missing(self, refs: Iterable[str | bytes | None]) -> list[str]:
        """The subject references among ``refs`` whose keys are not loaded yet."""
        out = {_s(r) for r in refs if r}
        return [r for r in out if r not in self._keys]

    def _names(self, refs: list[str]) -> list[str]:
        return [self.keys.data_key(*Keys.split_session_id(r)) for r in refs]

    def learn(self, refs: list[str], wrapped: list[bytes | None]) -> None:
        """Keep the keys of ``refs`` read from Redis (None: gone)."""
        for ref, w in zip(refs, wrapped, strict=True):
            aead = None
            if w is not None and self.master is not None:
                try:
                    aead = AESGCM(self.master.unwrap_ref(ref, w))
                except KeyUnavailable:
                    self.unopenable_keys += 1  # a wrong LIFELINE_DATA_KEY, not an erasure
            elif w is not None:
                self.unopenable_keys += 1
            self._keys[ref] = aead

    def load(self, r: Any, refs: Iterable[str | bytes | None]) -> None:
        """Fetch the keys of ``refs`` not loaded yet, with a synchronous redis client."""
        need = self.missing(refs)
        if need:
            self.learn(need, mget_sync(r, self._names(need)))

    async def aload(self, r: Any, refs: Iterable[str | bytes | None]) -> None:
        """Fetch the keys of ``refs`` not loaded yet, with a ``redis.asyncio`` client."""
        need = self.missing(refs)
        if need:
            self.learn(need, await mget(r, self._names(need)))

    def open(self, ref: str | bytes | None, blob: bytes) -> bytes | None:
        """The msgpack payload of an entry (``ref`` None: plaintext); None if unreadable."""
        if not ref:
            return blob
        aead = self._keys.get(_s(ref))
        out = open_sealed(aead, blob) if aead is not None else None
        if out is None:
            self.unreadable += 1
        return out

    def open_fields(self, fields: Mapping[Any, Any]) -> bytes | None:
        """:meth:`open` for a stream entry's fields as redis-py returns them (bytes keys)."""
        return self.open(fields.get(b"k"), fields[b"ev"])

    async def aopen_entries(self, r: Any, entries: list[tuple[Any, Mapping[Any, Any]]]) -> list:
        """The payloads of XRANGE ``entries`` (None where unreadable), keys fetched as needed."""
        await self.aload(r, (f.get(b"k") for _, f in entries))
        return [self.open_fields(f) for _, f in entries]


def master_keys(settings: Any) -> MasterKeys:
    """The master keys of ``settings`` (readers: always, whatever LIFELINE_ENCRYPT_AT_REST says)."""
    return MasterKeys(settings.data_key)


def opener_for(settings: Any, keys: Keys | None = None) -> Opener:
    """A fresh :class:`Opener` for the deployment's settings."""
    return Opener(keys or Keys(settings.prefix), master_keys(settings))


# Replace a wrapped key only if it is still the one read: a concurrent erasure
# (DEL) or a fresh key must not be overwritten. Keeps the key's TTL.
_REWRAP_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


def rewrap(r: Any, keys: Keys, master: MasterKeys, count: int = 500) -> dict[str, int]:
    """Re-wrap every data key under the current master key (the second step of a rotation).

    ``r`` is a synchronous redis client. SCANs ``{p}dk:*``; a key already
    wrapped by the current master key is left alone, one no configured
    master key opens is left alone and counted (``unopenable``: its
    subject's data is unreadable until its master key is configured again).
    Returns counts: ``rewrapped``, ``current``, ``unopenable``.
    """
    script = r.register_script(_REWRAP_LUA)
    start = len(keys.script_prefixes()["dk"])  # where "{site}:{subject}" begins
    counts = {"rewrapped": 0, "current": 0, "unopenable": 0}
    for name in r.scan_iter(match=keys.data_key("*", "*"), count=count):
        wrapped = r.get(name)
        if wrapped is None:
            continue  # erased meanwhile
        if MasterKeys.key_id(wrapped) == master.current:
            counts["current"] += 1
            continue
        ref = _s(name)[start:]
        try:
            fresh = master.wrap(Keys.split_session_id(ref)[0], master.unwrap_ref(ref, wrapped))
        except KeyUnavailable:
            counts["unopenable"] += 1
            continue
        counts["rewrapped"] += int(script(keys=[name], args=[wrapped, fresh]))
    return counts
