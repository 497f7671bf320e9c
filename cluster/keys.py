"""Every Redis key Lifeline uses, in one place.

| key | type | holds |
|---|---|---|
| ``{p}ev:{sid}`` | stream | the session's event log; entry fields f, l (first/last seq), ev (msgpack list of events) |
| ``{p}s:{sid}`` | hash | seq (last durable seq), site (the one that created it), consent, iv_count, iv_last |
| ``{p}snap:{sid}`` | string | msgpack session snapshot |
| ``{p}iv:{iid}`` | hash | one intervention decision, its outcome and its ``log_id`` in ivlog |
| ``{p}ivs:{sid}`` | set | the iids of a session's decisions (to erase them with the session) |
| ``{p}ivlog`` | stream | every decision, for operators and uplift analysis |
| ``{p}consent:{sid}`` | stream | the session's consent records: one entry per change (consent, ts, site, via) |
| ``{p}push:{gateway}`` | pub/sub channel | intervention updates for one gateway's sockets |
| ``{p}model:*`` | see training/registry.py | model registry |
"""

from __future__ import annotations

from dataclasses import dataclass

SESSION_TTL_S = 7 * 24 * 3600  # event logs and snapshots are kept a week for training export
# Consent records outlive the data they cover: they are the proof of a grant
# and the record of a withdrawal after an erasure. 400 days: a consent is
# asked again after 13 months (CNIL), and its proof is kept as long.
CONSENT_TTL_S = 400 * 24 * 3600
CONSENT_RECORDS_MAX = 256  # per session, so no visitor's changes evict another's records


@dataclass(frozen=True)
class Keys:
    prefix: str = "ll:"

    def events(self, sid: str) -> str:
        return f"{self.prefix}ev:{sid}"

    def session(self, sid: str) -> str:
        return f"{self.prefix}s:{sid}"

    def snapshot(self, sid: str) -> str:
        return f"{self.prefix}snap:{sid}"

    def intervention(self, iid: str) -> str:
        return f"{self.prefix}iv:{iid}"

    def interventions_of(self, sid: str) -> str:
        return f"{self.prefix}ivs:{sid}"

    @property
    def intervention_log(self) -> str:
        return f"{self.prefix}ivlog"

    def consent_records(self, sid: str) -> str:
        return f"{self.prefix}consent:{sid}"

    def push(self, gateway_id: str) -> str:
        return f"{self.prefix}push:{gateway_id}"
