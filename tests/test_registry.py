"""The model registry on a real Redis: versions, metadata, the live pointer, refusals."""

from __future__ import annotations

import json
import re
import time

import pytest
import redis

from actors.core.features import FEATURE_NAMES, FEATURE_SCHEMA_HASH
from cluster.keys import Keys
from training.registry import ModelRegistry, RegistryError, SchemaMismatch, UnknownVersion


@pytest.fixture
def reg(redis_url: str, prefix: str):
    r = redis.Redis.from_url(redis_url)
    yield ModelRegistry(r, prefix)
    r.close()


def _meta(**kw) -> dict:
    return {"feature_schema": FEATURE_SCHEMA_HASH, "feature_names": list(FEATURE_NAMES), **kw}


def test_save_list_load(reg: ModelRegistry) -> None:
    assert reg.list() == [] and reg.live() is None
    v1 = reg.save(
        b"model-one", _meta(metrics={"xgboost": {"roc_auc": 0.8}}, data={"source": "sim"})
    )
    v2 = reg.save(b"model-two", _meta())
    assert re.fullmatch(r"v0001-[0-9a-f]{8}", v1) and re.fullmatch(r"v0002-[0-9a-f]{8}", v2)
    blob, meta = reg.load(v1)
    assert blob == b"model-one"
    assert meta["metrics"]["xgboost"]["roc_auc"] == 0.8 and meta["data"]["source"] == "sim"
    assert meta["feature_schema"] == FEATURE_SCHEMA_HASH and meta["feature_names"] == list(
        FEATURE_NAMES
    )
    assert meta["version"] == v1 and meta["size_bytes"] == 9
    assert abs(meta["created_ms"] - time.time() * 1000) < 60_000 and meta["created"].endswith(
        "+00:00"
    )
    listed = reg.list()
    assert [m["version"] for m in listed] == [v1, v2]
    assert not any(m["live"] for m in listed)
    assert reg.resolve("latest") == v2 and reg.resolve("v1") == v1 and reg.resolve("2") == v2
    with pytest.raises(UnknownVersion, match="no model version 'v9'"):
        reg.resolve("v9")


def test_save_refuses_metadata_without_schema(reg: ModelRegistry) -> None:
    with pytest.raises(RegistryError, match="feature_schema"):
        reg.save(b"x", {"feature_names": ["a"]})
    with pytest.raises(RegistryError, match="non-empty bytes"):
        reg.save(b"", _meta())
    assert reg.list() == []


def test_promote_sets_pointer_and_publishes(
    reg: ModelRegistry, redis_url: str, prefix: str
) -> None:
    v1 = reg.save(b"one", _meta())
    v2 = reg.save(b"two", _meta())
    sub = redis.Redis.from_url(redis_url).pubsub()
    sub.subscribe(f"{prefix}model:promoted")
    assert sub.get_message(timeout=2)["type"] == "subscribe"
    reg.promote(v1)
    reg.promote(v2, expected_schema=FEATURE_SCHEMA_HASH)
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        msg = sub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            got.append(msg["data"].decode())
    sub.close()
    assert got == [v1, v2]
    assert reg.live() == v2
    assert reg.r.get(Keys(prefix).model("live")) == v2.encode()
    assert [h["version"] for h in reg.history()] == [v2, v1]
    assert reg.history()[0]["previous"] == v1
    assert [m["version"] for m in reg.list() if m["live"]] == [v2]
    with pytest.raises(RegistryError, match="is live"):
        reg.delete(v2)
    reg.delete(v1)
    assert reg.versions() == [v2]


def test_unknown_version_is_a_clear_error(reg: ModelRegistry) -> None:
    with pytest.raises(UnknownVersion, match="the registry is empty"):
        reg.promote("v0042-deadbeef")
    v = reg.save(b"m", _meta())
    with pytest.raises(
        UnknownVersion, match=f"no model version 'v0042-deadbeef' in the registry; known: {v}"
    ):
        reg.load("v0042-deadbeef")
    assert reg.live() is None


def test_mismatched_schema_is_refused_and_live_model_kept(reg: ModelRegistry) -> None:
    good = reg.save(b"good", _meta())
    reg.promote(good, expected_schema=FEATURE_SCHEMA_HASH)
    bad = reg.save(b"bad", {"feature_schema": "0123456789abcdef", "feature_names": ["old_feature"]})
    with pytest.raises(SchemaMismatch, match="trained on feature schema '0123456789abcdef'"):
        reg.promote(bad, expected_schema=FEATURE_SCHEMA_HASH)
    assert reg.live() == good
    # Without the check (``lifeline promote --force``) it goes live; the shards then refuse it.
    reg.promote(bad)
    assert reg.live() == bad
    assert (
        json.loads(reg.r.get(reg.keys.model(f"meta:{bad}")))["feature_schema"]
        != FEATURE_SCHEMA_HASH
    )
