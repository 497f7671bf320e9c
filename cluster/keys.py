"""Every Redis key Lifeline uses, in one place.

| key | type | holds |
|---|---|---|
| ``{p}ev:{site}:{sid}`` | stream | the session's event log; entry fields f, l (first/last seq), ev (msgpack list of events, sealed with AES-GCM when the entry has k), k (the sealing subject, ``{site}:{vid}`` or ``{site}:{sid}``; cluster/sealing.py) |
| ``{p}s:{site}:{sid}`` | hash | seq (last durable seq), site (the one that created it), created, consent, iv_count, iv_last, seg (segment name of its latest decision), ix_seg (the segment it is indexed under) |
| ``{p}snap:{site}:{sid}`` | string | msgpack session snapshot |
| ``{p}iv:{iid}`` | hash | one intervention decision (with its sid, site and segment), its outcome, the session's first conversion after it (``converted``, ``converted_seq``, ``goal``) and its ``log_id`` in ivlog |
| ``{p}ivs:{site}:{sid}`` | set | the iids of a session's decisions (to erase them with the session) |
| ``{p}ix:{site}:seen`` | sorted set | the session explorer's index: a site's sids by last-seen time (ms; actors/shard/index.py) |
| ``{p}ix:{site}:ids`` | sorted set | the same sids, all scored 0, for lookups by id prefix (ZRANGE BYLEX) |
| ``{p}ix:{site}:iv`` | sorted set | the sids with at least one intervention decision (shown or holdout), by last-seen time |
| ``{p}ix:{site}:seg:{name}`` | sorted set | the sids whose latest decision put them in segment ``name``, by last-seen time |
| ``{p}ix:{site}:segs`` | set | the segment names that have a ``seg:`` set (for trimming) |
| ``{p}ivlog`` | stream | every decision, for operators and uplift analysis (training/outcomes.py) |
| ``{p}owner:{sid}`` | string | the site that created the session: a sid belongs to one site only |
| ``{p}consent:{site}:{sid}`` | stream | the session's consent records: one entry per change (consent, ts, site, via) |
| ``{p}v:{site}:{vid}`` | hash | a visitor's record (the pseudonymous visitor id of the client, created with analytics consent) |
| ``{p}vs:{site}:{vid}`` | sorted set | the visitor's sessions: sid by creation time (ms); added by each hello that carries the vid |
| ``{p}vp:{site}:{vid}`` | string | the visitor's profile across visits (msgpack, actors/core/profile.py; at most 4 KB), written by the shards as the visitor's sessions end, with analytics consent; expires the site's profiles retention after the last update |
| ``{p}vc:{site}:{vid}`` | stream | the visitor's consent records |
| ``{p}dk:{site}:{subject}`` | string | the data key (AES-256, wrapped by the master key ``LIFELINE_DATA_KEY``) sealing the event-log entries of a subject: a visitor (``vid``), or a session without one (``sid``); expires ``DATA_KEY_TTL_S`` after its last use (cluster/sealing.py) |
| ``{p}erased:{site}:{digest}`` | hash | the minimal proof of an erasure (a visitor's: kind, reason, ts, sessions, keys, entries; kept the site's consent-proof period) or the refusal marker of an erased session (kind, ts); named by :func:`subject_digest`, holds no visitor or session id (serve/rights/erasure.py) |
| ``{p}rights`` | pub/sub channel | erasures: (site, sids) whose sessions every gateway drops and forgets on their shards (serve/rights/erasure.py) |
| ``{p}tally:d:{site}:{day}`` | hash | the console's counts of one site and UTC day (YYYY-MM-DD): funnel steps, signals by page type, decisions, reactions, conversions, segments (actors/core/tally.py); kept ``TALLY_DAY_TTL_S`` |
| ``{p}tally:m:{site}:{minute}`` | hash | the same counts (decisions, reactions, conversions, sessions) of one UTC minute (epoch minutes), for the Live page; kept ``TALLY_MINUTE_TTL_S`` |
| ``{p}push:{gateway}`` | pub/sub channel | intervention updates for one gateway's sockets |
| ``{p}gwmetrics:{gateway}`` | list | one gateway process's metrics snapshots (JSON: counters, cumulative histogram buckets), newest first, ~1 a second, the last 75; expires 10 s after the last (serve/edge/metrics.py) |
| ``{p}gwmetrics`` | sorted set | gateway ids by the time of their last snapshot (the console's /metrics and Live page find them there, without a SCAN) |
| ``{p}layout`` | string | ``tagged`` once an earlier release's keys are renamed to this layout (cluster/migrate.py) |
| ``{p}model:seq``, ``{p}model:versions``, ``{p}model:live``, ``{p}model:history`` | counter, sorted set, string, list | the model registry (training/registry.py) |
| ``{p}model:blob:{version}``, ``{p}model:meta:{version}`` | string, hash | one registered model |
| ``{p}model:promoted`` | pub/sub channel | promotions |
| ``{p}model:plots:{version}`` | hash | one registered model's training-report plots: file name -> PNG bytes |
| ``{p}sites:overrides`` | hash | run-time site rules: site key -> the site's whole table as JSON, replacing the sites file's (cluster/site_rules.py) |
| ``{p}sites:version`` | counter | bumped with every change of ``sites:overrides``; gateways and shards poll it |
| ``{p}shards:members`` | list | the shard set in force: the shards' Ray actor names, in the order they were added; gateways build their hash rings from these names (cluster/shard_set.py) |
| ``{p}shards:version`` | counter | bumped with every change of ``shards:members`` (in the same transaction); gateways poll it |
| ``{p}shards:applied`` | hash | gateway id -> the ``shards:version`` it has switched to (its old shards drained and released); a removed shard is stopped once every live gateway is there |
| ``{p}shards:requests`` | list | operators' requests to the running ``lifeline up`` (JSON: op ``add``/``remove``, name, id); the stack pops and performs them (``lifeline shards``) |
| ``{p}shards:reply:{id}`` | list | the outcome of one request (JSON), pushed by the stack for the waiting command; expires after a minute |
| ``{p}recsys:{site}:model`` (``:version``), ``{p}recsys:{site}:catalog`` | string, hash | a site's recommender model and catalog (serve/apps/recommender.py) |
| ``{p}nudge:{version}:{facts}`` | string | a cached LLM nudge for one situation (serve/apps/nudge.py) |
| ``{p}chat:{site}:{sid}`` | list | a session's help-chat memory: JSON turns (role, text, ts; from the gateway's chat also id, by, mid, citations), the last ``CHAT_TURNS_MAX``, expiring with the site's ``chats`` retention (a week by default); the visitor's free text, so erased and exported with the session (serve/apps/chat_memory.py, serve/chat/store.py) |
| ``{p}chatst:{site}:{sid}`` | hash | a session's help-chat state (serve/chat/store.py): ``c`` (JSON: the state machine of actors/core/chat.py without its turns, the turn counter, the recent client message ids), ``state``, and for a chat queued without an offer ``page``, ``sig`` (page type and signal names when it was queued); no chat text; both it and the chat list expire the site's ``chats`` retention after the chat's last change |
| ``{p}chatq:{site}`` | sorted set | the site's support queue: sids of chats waiting for a person, by the time they started waiting (ms); sids only |
| ``{p}chatleft:{site}`` | sorted set | the site's left messages: sids whose visitor left a message (the text is in the session's ``chat`` list), by time (ms) |
| ``{p}chatev`` | pub/sub channel | help-chat frames for visitors (every gateway forwards those of its sockets) and changes for the console's Support pages (JSON: site, sid, to, frame) |
| ``{p}audit`` | stream | the console's audit log: who, action, from, detail (serve/console/audit.py) |
| ``{p}op:user:{name}`` | hash | an operator account: role, password hash (scrypt), created (serve/console/accounts.py) |
| ``{p}op:token:{sha256}`` | hash | an API token (by its digest): name, role, scopes, expires |
| ``{p}op:session:{sha256}`` | hash | a signed-in browser session (by its cookie's digest): name, role, csrf; expires |
| ``{p}op:users``, ``{p}op:tokens:{name}``, ``{p}op:sessions:{name}`` | sets | operator names; an operator's token and session digests (to revoke them) |
| ``{p}op:login:a:{address}``, ``{p}op:login:n:{name}`` | counter | failed sign-ins of an address or a name in the current window |

Hash tags: in every key named by a session or a visitor (the families of
:data:`SUBJECT_FAMILIES`, and ``owner``), the id is wrapped in braces, a Redis
Cluster hash tag: the table's ``{site}:{sid}`` is written ``shop:{Xb3...}``,
``owner:{sid}`` is ``owner:{Xb3...}``. So a session's log, record, snapshot,
consent records, data key, chat and owner share one slot (and one node of a
Redis Cluster), and so do a visitor's keys. Keys that a transaction or a
script uses together share a tag too: a site's explorer index its site
(``ix:{site}:seen`` is ``ix:{shop}:seen``), and the model registry, the site
rules, the shard set and the operator accounts each their group
(``model:live`` is ``{model}:live``; likewise ``{sites}``, ``{shards}``,
``{op}``). A standalone Redis or Sentinel ignores the braces. Releases
before kept the ids bare; cluster/migrate.py renames their keys at start-up.

A session's keys are scoped by its site (``{site}:{sid}``, :meth:`Keys.session_id`):
the data of one site's session is never under a key another site's session
could name. A sid also belongs to one site only (``{p}owner:{sid}``, set
atomically by the hello that created the session; serve/edge/store.py), so the
gateways and shards, which hold sessions by sid, never mix two sites'
visitors. Site keys are TOML keys and sids are ``[A-Za-z0-9_-]``, so the
last ``:`` splits a session id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

# The default retention, declared with a site's own (actors/core/retention.py).
from actors.core.retention import CONSENT_TTL_S, PROFILE_TTL_S, SESSION_TTL_S  # noqa: F401

# The console's tallies are sums without session ids: a day's go with the records
# they sum (a week), a minute's are for the Live page's last hour.
TALLY_DAY_TTL_S = SESSION_TTL_S
TALLY_MINUTE_TTL_S = 2 * 3600
# A data key outlives the logs it seals by a day (both are refreshed as the subject
# comes back), then goes: entries copied out under it become unreadable.
DATA_KEY_TTL_S = SESSION_TTL_S + 24 * 3600
# A chat's memory: the turns the assistant re-reads and an operator sees. Bounded
# in count and in bytes (serve/apps/chat_memory.py trims the oldest first).
CHAT_TURNS_MAX = 40
CHAT_BYTES_MAX = 32 * 1024
# Per visitor (or session), so no visitor's changes evict another's records.
CONSENT_RECORDS_MAX = 256


@dataclass(frozen=True)
class KeyFamily:
    """One kind of key that holds a data subject's data: erasure deletes it, access exports it.

    ``tag`` is the key's name part (``{p}{tag}:{site}:{id}``), ``scope``
    ``session`` (``id`` is a sid) or ``visitor`` (a vid), ``kind`` the Redis
    type (``string``, ``hash``, ``stream``, ``set``, ``zset``, ``list``), ``codec`` how
    its values read (``msgpack``: a string or the ``ev``/``state`` fields,
    ``events``: an event-log stream, sealed or not; ``json``: JSON elements;
    ``raw``: as stored; ``secret``:
    never exported, only deleted). A helper that adds a per-session or
    per-visitor key family (chat memory, say) adds one row to
    :data:`SUBJECT_FAMILIES` and its method to :class:`Keys`: the erasure
    and access code (serve/rights/) read this table, nothing else.
    """

    name: str  # the access document's field
    tag: str
    scope: str
    kind: str
    codec: str = "raw"


# Every family of keys named by a session or a visitor id. Keys that hold a
# subject's id elsewhere (the intervention records ``iv:{iid}`` and their
# ``ivlog`` entries, found through ``ivs``; the explorer's ``ix:`` entries; the
# sid's ``owner`` key) are erased by serve/rights/erasure.py's script itself.
SUBJECT_FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("session", "s", "session", "hash"),
    KeyFamily("events", "ev", "session", "stream", "events"),
    KeyFamily("snapshot", "snap", "session", "string", "msgpack"),
    KeyFamily("decision_ids", "ivs", "session", "set"),
    KeyFamily("consent", "consent", "session", "stream"),
    # The data key of a session without a visitor (encryption at rest): shredding it
    # makes every copy of the session's encrypted events unreadable.
    KeyFamily("data_key", "dk", "session", "string", "secret"),
    # The help chat's memory: the visitor's own words (serve/apps/chat_memory.py).
    KeyFamily("chat", "chat", "session", "list", "json"),
    # The help chat's state (no text: states, counts, client message ids; serve/chat/store.py).
    KeyFamily("chat_state", "chatst", "session", "hash"),
    KeyFamily("visitor", "v", "visitor", "hash"),
    KeyFamily("profile", "vp", "visitor", "string", "msgpack"),
    KeyFamily("consent", "vc", "visitor", "stream"),
    KeyFamily("data_key", "dk", "visitor", "string", "secret"),
    # Last: the page-by-page erasure reads the visitor's sessions from it.
    KeyFamily("session_ids", "vs", "visitor", "zset"),
)


def subject_digest(site: str, subject: str) -> str:
    """The pseudonym of an erased visitor or session: SHA-256 of ``site|subject``, 32 hex digits.

    Names the erasure proof and the refusal markers (``{p}erased:{site}:{digest}``)
    and stands for the visitor in the console's audit log. One-way: ids are
    long random strings, so the digest cannot be reversed by guessing.
    """
    return hashlib.sha256(f"{site}|{subject}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Keys:
    prefix: str = "ll:"

    @staticmethod
    def session_id(site: str, sid: str) -> str:
        """The part of a subject's keys that names it: its site and its id (a sid or a vid), tagged.

        The id is a Redis Cluster hash tag (``{site}:{{id}}``, see the module's
        docstring): every key of one session, or of one visitor, hashes to the
        same slot, so a script that touches a session's log, record and
        snapshot touches one slot.
        """
        return f"{site}:{{{sid}}}"

    @staticmethod
    def split_session_id(scoped: str) -> tuple[str, str]:
        """(site, id) of a :meth:`session_id`; also reads the untagged ``{site}:{id}`` of
        an older layout (the subject references of event-log entries logged before it)."""
        site, _, sid = scoped.rpartition(":")
        return site, sid.strip("{}")

    def events(self, site: str, sid: str) -> str:
        return f"{self.prefix}ev:{site}:{{{sid}}}"

    def session(self, site: str, sid: str) -> str:
        return f"{self.prefix}s:{site}:{{{sid}}}"

    def snapshot(self, site: str, sid: str) -> str:
        return f"{self.prefix}snap:{site}:{{{sid}}}"

    def interventions_of(self, site: str, sid: str) -> str:
        return f"{self.prefix}ivs:{site}:{{{sid}}}"

    def consent_records(self, site: str, sid: str) -> str:
        return f"{self.prefix}consent:{site}:{{{sid}}}"

    def visitor(self, site: str, vid: str) -> str:
        return f"{self.prefix}v:{site}:{{{vid}}}"

    def visitor_sessions(self, site: str, vid: str) -> str:
        return f"{self.prefix}vs:{site}:{{{vid}}}"

    def visitor_profile(self, site: str, vid: str) -> str:
        return f"{self.prefix}vp:{site}:{{{vid}}}"

    def visitor_consent(self, site: str, vid: str) -> str:
        return f"{self.prefix}vc:{site}:{{{vid}}}"

    def data_key(self, site: str, subject: str) -> str:
        """The wrapped data key of ``subject``: a visitor's vid, or a session's sid.

        A visitor's events are sealed under ``data_key(site, vid)``, and a
        session's events logged before its hello named a visitor under
        ``data_key(site, sid)``: erasing a visitor deletes both (the visitor's
        and each of its sessions'), and every copy of their events is then
        unreadable.
        """
        return f"{self.prefix}dk:{site}:{{{subject}}}"

    def data_keys_of(self, site: str, vid: str | None, sids: Iterable[str]) -> list[str]:
        """Every data key an erasure of visitor ``vid`` (or of sessions ``sids``) must delete.

        The visitor's own, and each session's (its entries logged before a
        hello named the visitor). Deleting them makes every copy of those
        events unreadable: the log, exports, backups (docs/ENCRYPTION.md).
        """
        subjects = ([vid] if vid else []) + list(sids)
        return [self.data_key(site, s) for s in subjects]

    def erased(self, site: str, digest: str) -> str:
        return f"{self.prefix}erased:{site}:{digest}"

    def family(self, family: KeyFamily, site: str, subject: str) -> str:
        """The key of ``family`` for ``subject`` (a sid or a vid, as its scope says)."""
        return f"{self.subject_prefix(family.tag, site)}{{{subject}}}"

    def subject_prefix(self, tag: str, site: str) -> str:
        """What precedes the tagged subject in a subject key (``{p}{tag}:{site}:``, ``tag`` a
        :class:`KeyFamily`'s), for scripts, which add ``{subject}``."""
        return f"{self.prefix}{tag}:{site}:"

    @property
    def layout(self) -> str:
        """Which key layout the data is in (cluster/migrate.py)."""
        return f"{self.prefix}layout"

    @property
    def rights(self) -> str:
        """Pub/sub channel of erasures, for the gateways (serve/rights/erasure.py)."""
        return f"{self.prefix}rights"

    def session_index(self, site: str, part: str) -> str:
        """The session explorer's index of ``site``: ``seen``, ``ids``, ``iv``, ``segs``, ``seg:{name}``."""
        return f"{self.prefix}ix:{{{site}}}:{part}"

    def owner(self, sid: str) -> str:
        """The site that owns ``sid``; tagged by the sid, so it lives with the session's keys."""
        return f"{self.prefix}owner:{{{sid}}}"

    def intervention(self, iid: str) -> str:
        return f"{self.prefix}iv:{iid}"

    @property
    def intervention_log(self) -> str:
        return f"{self.prefix}ivlog"

    @property
    def events_pattern(self) -> str:
        """SCAN pattern of every session's event log (export, training)."""
        return f"{self.prefix}ev:*"

    def session_of_events_key(self, key: str) -> tuple[str, str]:
        """(site, sid) of an event-log key that :attr:`events_pattern` found."""
        return self.split_session_id(key[len(self.prefix) + 3 :])

    def script_prefixes(self) -> dict[str, str]:
        """Key prefixes for Lua scripts, which append a :meth:`session_id` (or an iid) to them."""
        return {
            "ev": f"{self.prefix}ev:",
            "s": f"{self.prefix}s:",
            "snap": f"{self.prefix}snap:",
            "ivs": f"{self.prefix}ivs:",
            "iv": f"{self.prefix}iv:",
            "log": self.intervention_log,
            "ix": f"{self.prefix}ix:",
            "dk": f"{self.prefix}dk:",
        }

    @property
    def model_promoted(self) -> str:
        """The pub/sub channel of model promotions (a channel: not a key, so no hash tag)."""
        return f"{self.prefix}model:promoted"

    def model(self, part: str) -> str:
        """The model registry's keys: ``seq``, ``versions``, ``live``, ``history``,
        ``challenger`` (hash: version, share), ``blob:{version}``, ``meta:{version}``,
        ``plots:{version}`` (hash: file name -> PNG)."""
        return f"{self.prefix}{{model}}:{part}"

    def sites(self, part: str) -> str:
        """Run-time site rules: ``overrides`` (hash), ``version`` (counter) (cluster/site_rules.py)."""
        return f"{self.prefix}{{sites}}:{part}"

    def shards(self, part: str) -> str:
        """The shard set: ``members``, ``version``, ``applied``, ``requests``, ``reply:{id}``."""
        return f"{self.prefix}{{shards}}:{part}"

    def recsys_model(self, site: str) -> str:
        return f"{self.prefix}recsys:{site}:model"

    def recsys_catalog(self, site: str) -> str:
        return f"{self.prefix}recsys:{site}:catalog"

    def nudge(self, version: str, facts: list[str]) -> str:
        return f"{self.prefix}nudge:{version}:" + ":".join(facts)

    def chat(self, site: str, sid: str) -> str:
        """A session's help-chat memory (list of JSON turns); see CHAT_TURNS_MAX."""
        return f"{self.prefix}chat:{site}:{{{sid}}}"

    def chat_state(self, site: str, sid: str) -> str:
        """A session's help-chat state (hash, no text); see serve/chat/store.py."""
        return f"{self.prefix}chatst:{site}:{{{sid}}}"

    def chat_queue(self, site: str) -> str:
        """The site's chats waiting for a person: sid -> waiting since (ms)."""
        return f"{self.prefix}chatq:{site}"

    def chat_left(self, site: str) -> str:
        """The site's sessions whose visitor left a message: sid -> when (ms)."""
        return f"{self.prefix}chatleft:{site}"

    @property
    def chat_events(self) -> str:
        """Pub/sub channel of help-chat frames and changes (serve/chat/store.py)."""
        return f"{self.prefix}chatev"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    def operator(self, part: str) -> str:
        """The console's accounts: ``users``, ``user:{name}``, ``token:{digest}``,
        ``session:{digest}``, ``tokens:{name}``, ``sessions:{name}``, ``login:a:{address}``,
        ``login:n:{name}`` (serve/console/accounts.py)."""
        return f"{self.prefix}{{op}}:{part}"

    def tally_day(self, site: str, day: str) -> str:
        """The console's counts of ``site`` on a UTC ``day`` (YYYY-MM-DD)."""
        return f"{self.prefix}tally:d:{site}:{day}"

    def tally_minute(self, site: str, minute: int) -> str:
        """The console's counts of ``site`` in one UTC minute (ms since the epoch // 60000)."""
        return f"{self.prefix}tally:m:{site}:{minute}"

    def push(self, gateway_id: str) -> str:
        return f"{self.prefix}push:{gateway_id}"

    def gateway_metrics(self, gateway_id: str) -> str:
        return f"{self.prefix}gwmetrics:{gateway_id}"

    @property
    def gateway_metrics_index(self) -> str:
        return f"{self.prefix}gwmetrics"
