"""Model registry in Redis: versioned XGBoost artifacts, their metadata, and the live pointer.

What it is for: ``lifeline train`` saves a model here, ``lifeline models``
lists what is stored, ``lifeline promote VERSION`` makes one live. The
session shards watch the live pointer (``{prefix}model:live``, and the
``{prefix}model:promoted`` pub/sub channel for an immediate nudge), load the
blob and check ``meta["feature_schema"]`` against
``actors.core.features.FEATURE_SCHEMA_HASH`` before swapping it in.

Keys (all under the deployment's prefix):

* ``model:seq``            counter behind the version numbers
* ``model:versions``       sorted set: version -> its number (listing order)
* ``model:blob:{version}`` the model bytes (``Booster.save_raw("ubj")``)
* ``model:meta:{version}`` JSON metadata (see :meth:`ModelRegistry.save`)
* ``model:live``           the live version (a plain string)
* ``model:history``        JSON lines of promotions and refused promotions, newest first (capped)
* ``model:plots:{version}`` hash: the training report's plots (file name -> PNG), for the console

Limits: blobs live in Redis memory (a model of a few hundred trees is well
under 1 MB); there is no garbage collection of old versions (``delete`` is
explicit); promotion is last-writer-wins. The registry itself promotes what
it is told; the guard that compares a candidate with the live model first
is ``training.promotion`` (the CLI runs it), and its decision and figures
are kept in the history next to the promotion they allowed or refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import datetime, timezone
from typing import Any

import redis

from cluster.keys import Keys

HISTORY_MAX = 100
REQUIRED_META = ("feature_schema", "feature_names")
PLOT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.png")


class RegistryError(RuntimeError):
    """Base class of the registry's own errors."""


class UnknownVersion(RegistryError, KeyError):
    """No model is stored under that version."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else "unknown version"


class SchemaMismatch(RegistryError):
    """The model was trained on another feature layout than the one expected."""


class ModelRegistry:
    """Versioned models with metadata in Redis, plus the live pointer shards follow.

    ``r`` is a synchronous ``redis.Redis`` client (bytes or decoded responses
    both work); ``prefix`` is the deployment's key prefix (``Settings.prefix``).
    """

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r = r
        self.prefix = prefix
        self.keys = keys = Keys(prefix)
        self.k_seq = keys.model("seq")
        self.k_versions = keys.model("versions")
        self.k_live = keys.model("live")
        self.k_challenger = keys.model("challenger")
        self.k_history = keys.model("history")
        self.channel = keys.model_promoted

    def _k_blob(self, version: str) -> str:
        return self.keys.model(f"blob:{version}")

    def _k_meta(self, version: str) -> str:
        return self.keys.model(f"meta:{version}")

    def _k_plots(self, version: str) -> str:
        return self.keys.model(f"plots:{version}")

    @staticmethod
    def _text(value: Any) -> str | None:
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    # -- writing -------------------------------------------------------------------------------
    def save(self, model_bytes: bytes, meta: dict) -> str:
        """Store a model and its metadata; return its new version, e.g. ``v0003-1a2b3c4d``.

        ``meta`` must carry ``feature_schema`` (the feature-schema hash the
        model was trained on) and ``feature_names``; anything else JSON-able
        (metrics, training data, hyperparameters) is kept as given. The
        registry adds ``version``, ``created`` (ISO-8601 UTC),
        ``created_ms``, ``size_bytes`` and ``sha256``. Saving does not make
        the model live; :meth:`promote` does.
        """
        if not isinstance(model_bytes, (bytes, bytearray)) or not model_bytes:
            raise RegistryError("model_bytes must be non-empty bytes (Booster.save_raw('ubj'))")
        missing = [k for k in REQUIRED_META if not meta.get(k)]
        if missing:
            raise RegistryError(
                f"model metadata lacks {missing}; cannot check it against the shards' features"
            )
        digest = hashlib.sha256(model_bytes).hexdigest()
        number = int(self.r.incr(self.k_seq))
        version = f"v{number:04d}-{digest[:8]}"
        now = time.time()
        full = dict(meta)
        full.update(
            version=version,
            created=datetime.fromtimestamp(now, tz=timezone.utc).isoformat(timespec="seconds"),
            created_ms=int(now * 1000),
            size_bytes=len(model_bytes),
            sha256=digest,
        )
        try:
            payload = json.dumps(full, sort_keys=True)
        except TypeError as exc:
            raise RegistryError(f"model metadata is not JSON-serialisable: {exc}") from exc
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self._k_blob(version), bytes(model_bytes))
        pipe.set(self._k_meta(version), payload)
        pipe.zadd(self.k_versions, {version: number})
        pipe.execute()
        return version

    def promote(
        self,
        version: str,
        *,
        expected_schema: str | None = None,
        check: dict[str, Any] | None = None,
    ) -> None:
        """Make ``version`` the live model and tell the shards at once.

        Sets ``{prefix}model:live`` and publishes the version on
        ``{prefix}model:promoted``. With ``expected_schema`` (the CLI passes
        the running code's ``FEATURE_SCHEMA_HASH``) a model trained on another
        feature layout is refused here already; without it, the shards refuse
        it themselves and keep their current model. ``check`` (the promotion
        guard's record, ``training.promotion``) is kept with the history entry.
        """
        meta = self.meta(version)  # raises UnknownVersion
        if expected_schema is not None and meta.get("feature_schema") != expected_schema:
            raise SchemaMismatch(
                f"model {version} was trained on feature schema {meta.get('feature_schema')!r}, "
                f"but the running code has {expected_schema!r}; retrain it (lifeline train) "
                "or promote with --force to let the shards refuse it"
            )
        entry: dict[str, Any] = {
            "version": version,
            "previous": self.live(),
            "at_ms": int(time.time() * 1000),
        }
        if check is not None:
            entry["check"] = check
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.k_live, version)
        pipe.lpush(self.k_history, json.dumps(entry))
        pipe.ltrim(self.k_history, 0, HISTORY_MAX - 1)
        pipe.execute()
        # Told after the write (a channel is no key: Redis Cluster refuses it in a
        # transaction); a shard that misses it finds the live pointer on its poll.
        self.r.publish(self.channel, version)

    def record_refusal(self, version: str, check: dict[str, Any]) -> None:
        """Keep a refused promotion of ``version`` in the history (``"refused": true``).

        The live pointer does not move and the shards are not told.
        """
        self.meta(version)  # raises UnknownVersion
        entry = {
            "version": version,
            "previous": self.live(),
            "at_ms": int(time.time() * 1000),
            "refused": True,
            "check": check,
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self.k_history, json.dumps(entry))
        pipe.ltrim(self.k_history, 0, HISTORY_MAX - 1)
        pipe.execute()

    def save_plots(self, version: str, plots: dict[str, bytes]) -> None:
        """Keep a version's training-report plots (``roc.png`` -> PNG bytes), for the console.

        Tens of kB each, a few per version; they go with the version on :meth:`delete`.
        """
        self.meta(version)  # raises UnknownVersion
        bad = [name for name in plots if not PLOT_NAME.fullmatch(name)]
        if bad:
            raise RegistryError(f"plot names must be like 'roc.png', got {bad}")
        if plots:
            self.r.hset(self._k_plots(version), mapping=plots)

    def plot_names(self, version: str) -> list[str]:
        """The names of a version's stored plots, sorted."""
        return sorted(self._text(n) or "" for n in self.r.hkeys(self._k_plots(version)))

    def plot(self, version: str, name: str) -> bytes | None:
        """One stored plot's PNG, or None."""
        raw = self.r.hget(self._k_plots(version), name)
        return bytes(raw) if raw is not None else None

    def delete(self, version: str) -> None:
        """Remove a stored model; the live one cannot be deleted."""
        if self.live() == version:
            raise RegistryError(f"{version} is live; promote another model before deleting it")
        if self.r.zscore(self.k_versions, version) is None:
            raise UnknownVersion(f"no model version {version!r} in the registry")
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self._k_blob(version), self._k_meta(version), self._k_plots(version))
        pipe.zrem(self.k_versions, version)
        pipe.execute()

    # -- reading -------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """All stored versions, oldest first."""
        return [self._text(v) or "" for v in self.r.zrange(self.k_versions, 0, -1)]

    def list(self) -> list[dict]:
        """Metadata of every stored model, oldest first, each with ``live`` (bool) added."""
        live = self.live()
        out = []
        for version in self.versions():
            raw = self.r.get(self._k_meta(version))
            if raw is None:  # deleted between the two reads
                continue
            meta = json.loads(raw)
            meta["live"] = version == live
            out.append(meta)
        return out

    def meta(self, version: str) -> dict:
        """The metadata of one version."""
        raw = self.r.get(self._k_meta(version))
        if raw is None:
            known = self.versions()
            hint = f"; known: {', '.join(known[-5:])}" if known else "; the registry is empty"
            raise UnknownVersion(f"no model version {version!r} in the registry{hint}")
        return json.loads(raw)

    def load(self, version: str) -> tuple[bytes, dict]:
        """The model bytes and metadata of one version."""
        meta = self.meta(version)
        blob = self.r.get(self._k_blob(version))
        if blob is None:
            raise UnknownVersion(f"model version {version!r} has metadata but no blob")
        return bytes(blob), meta

    def live(self) -> str | None:
        """The live version, or None when no model was ever promoted."""
        return self._text(self.r.get(self.k_live))

    def set_challenger(
        self, version: str, share: float, *, expected_schema: str | None = None
    ) -> None:
        """Let ``version`` score ``share`` of the sessions beside the live model (by session hash).

        The shards pick it up at their next model poll; decisions record the
        version that scored them, so the outcome report compares the two.
        """
        if not 0.0 < share < 1.0:
            raise RegistryError("the challenger's share must be between 0 and 1 (e.g. 0.1)")
        meta = self.meta(version)  # raises UnknownVersion
        if expected_schema is not None and meta.get("feature_schema") != expected_schema:
            raise SchemaMismatch(
                f"model {version} was trained on feature schema {meta.get('feature_schema')!r}, "
                f"but the running code has {expected_schema!r}"
            )
        self.r.hset(self.k_challenger, mapping={"version": version, "share": repr(share)})

    def clear_challenger(self) -> None:
        """Stop the challenger: the live model scores every session again."""
        self.r.delete(self.k_challenger)

    def challenger(self) -> tuple[str, float] | None:
        """The challenger's version and share, or None."""
        entry = self.r.hgetall(self.k_challenger)
        version = self._text(entry.get(b"version"))
        if not version:
            return None
        return version, float(entry.get(b"share", b"0"))

    def history(self, limit: int = 20) -> list[dict]:
        """Recent promotions, newest first: ``{"version", "previous", "at_ms"}``.

        Entries the promotion guard wrote also hold its ``check`` (decision,
        verdict, both models' figures); a refused promotion has
        ``"refused": true`` (and ``version`` was not made live).
        """
        return [json.loads(x) for x in self.r.lrange(self.k_history, 0, limit - 1)]

    def previous_live(self) -> str | None:
        """The version live before the live one (by the newest promotion to it), or None.

        What a roll-back promotes; None when the live model was the first.
        """
        live = self.live()
        for entry in self.history(HISTORY_MAX):
            if not entry.get("refused") and entry.get("version") == live:
                return entry.get("previous")
        return None

    def resolve(self, ref: str) -> str:
        """A version from a user's reference: a full version, ``v3``/``3``, or ``latest``."""
        versions = self.versions()
        if ref in versions:
            return ref
        if ref == "latest":
            if not versions:
                raise UnknownVersion("the registry is empty; run `lifeline train` first")
            return versions[-1]
        digits = ref[1:] if ref[:1] in ("v", "V") else ref
        if digits.isdigit():
            want = f"v{int(digits):04d}-"
            for v in versions:
                if v.startswith(want):
                    return v
        matches = [v for v in versions if v.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        hint = f"; known: {', '.join(versions[-5:])}" if versions else "; the registry is empty"
        raise UnknownVersion(f"no model version {ref!r} in the registry{hint}")
