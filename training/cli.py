"""The training side of the ``lifeline`` command.

Subcommands: train, evaluate, replay, challenge, models, promote, drift,
export, import, paper, report. ``add_commands(subparsers)`` registers the subcommands on the main CLI's
argparse subparsers; each sets ``func`` (call ``args.func(args)``, it
returns the exit code). ``python -m training.cli ...`` runs them without the main CLI.

Errors a user can fix (a missing data file, an unknown model version, a
schema mismatch, no Redis) end the command with one clear line on stderr
and exit code 2, not a traceback. A promotion the promotion guard refuses
(``promote``, ``train --promote``) exits with code 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from actors.core.detectors import DetectorConfig
from actors.core.policy import PolicyConfig
from cluster.config import PACKAGE_ROOT, Settings
from cluster.keys import Keys
from cluster.sealing import opener_for
from training.labels import DEFAULT_HORIZON_S, EXIT_SOON, LABELS

log = logging.getLogger("lifeline.training")

SOURCES = ("mix", "sim", "taobao", "diginetica", "yoochoose", "jsonl", "live", "redis")
LIVE = ("live", "redis")  # redis: the live source's older name
EXIT_REFUSED = 3  # a promotion the guard refused (training/promotion.py)
DEFAULT_REPORTS = PACKAGE_ROOT / "reports"


class UserError(RuntimeError):
    """Something the user can fix; printed without a traceback."""


# -- shared helpers ---------------------------------------------------------------------------------
def _redis(args: argparse.Namespace):
    """A Redis client for the configured deployment (``--redis-url`` / ``REDIS_URL``)."""
    from cluster.redis_client import redis_client
    from cluster.redis_server import RedisUnavailable, ensure_redis

    settings = Settings()
    if args.redis_url is not None:  # the TLS settings (LIFELINE_REDIS_CA, ...) still apply
        settings = dataclasses.replace(settings, redis_url=args.redis_url)
    url = settings.redis_target
    try:
        server = ensure_redis(url)
    except RedisUnavailable as exc:
        raise UserError(str(exc)) from None
    if server.embedded:
        print(
            "warning: no Redis is running; using a temporary embedded one, whose contents "
            "(models, events) vanish when this command exits. Set REDIS_URL to keep them.",
            file=sys.stderr,
        )
        args._embedded = server  # keep it alive for the command's duration
    return redis_client(server.url)


def _prefix(args: argparse.Namespace) -> str:
    return args.prefix if args.prefix is not None else Settings().prefix


def _registry(args: argparse.Namespace):
    from training.registry import ModelRegistry

    return ModelRegistry(_redis(args), _prefix(args))


def _add_redis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Redis")
    g.add_argument(
        "--redis-url",
        default=None,
        help="Redis holding the registry / event log (default: $REDIS_URL, else 127.0.0.1:6379)",
    )
    g.add_argument(
        "--prefix",
        default=None,
        help="key prefix of the deployment (default: $LIFELINE_PREFIX, else 'll:')",
    )


def _add_source_options(p: argparse.ArgumentParser, default: str = "sim") -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--source",
        choices=SOURCES,
        default=default,
        help="where sessions come from: mix = Taobao + Diginetica + the simulator (what the "
        "shipped model learns from); sim = the journey simulator; taobao = the real Taobao "
        "events (views, carts, favourites, purchases); diginetica = the real "
        "Diginetica views labelled by its purchases file; yoochoose = YOOCHOOSE clicks "
        "(no purchase label: export only); jsonl = a file written by `lifeline export` (--file); "
        "live = the live event log in Redis, with its outcomes (purchases, answers to help); "
        f"redis = the same (its older name) (default: {default})",
    )
    g.add_argument("--file", type=Path, help="the JSON-lines file for --source jsonl")
    g.add_argument(
        "--journeys",
        type=int,
        default=3000,
        help="simulated journeys for --source sim (default: 3000)",
    )
    g.add_argument("--seed", type=int, default=0, help="simulator and training seed (default: 0)")
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only the first N sessions by start time (quick runs; default: all)",
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of the public data sets (default: $LIFELINE_DATA_DIR, else ../shared/data)",
    )
    g.add_argument(
        "--engine",
        choices=("ray", "local"),
        default="ray",
        help="replay the sessions with ray.data tasks (ray) or in this process (local; "
        "no Ray start-up, fine below ~5,000 sessions). Default: ray",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster for --engine ray (default: start a local one with 2 CPUs)",
    )


def load_sessions(args: argparse.Namespace) -> tuple[list, dict[str, Any]]:
    """The sessions a command asked for, and a description of them for the model's metadata."""
    from training import loaders
    from training.dataset import export_redis, from_journeys, read_jsonl

    src = "live" if args.source in LIVE else args.source
    t0 = time.monotonic()
    opener: Any = None  # the sealed log's key reader, for the live log and sealed exports
    desc: dict[str, Any] = {"source": src}
    if src == "sim":
        from training.simulator import simulate

        sessions = from_journeys(simulate(args.journeys, seed=args.seed))
        desc.update(journeys=args.journeys, seed=args.seed)
    elif src == "diginetica":
        d = (args.data_dir / "diginetica") if args.data_dir else None
        sessions = loaders.load_diginetica(d)
        desc.update(files=["diginetica/train-item-views.csv", "diginetica/train-purchases.csv"])
    elif src == "taobao":
        f = (args.data_dir / "taobao" / "user-behavior.csv") if args.data_dir else None
        sessions = loaders.load_taobao(f)
        desc.update(files=["taobao/user-behavior.csv"])
    elif src == "mix":
        from training.simulator import simulate

        root = args.data_dir
        sessions = (
            loaders.load_taobao(root / "taobao" / "user-behavior.csv" if root else None)
            + loaders.load_diginetica(root / "diginetica" if root else None)
            + from_journeys(simulate(args.journeys, seed=args.seed))
        )
        desc.update(
            files=[
                "taobao/user-behavior.csv",
                "diginetica/train-item-views.csv",
                "diginetica/train-purchases.csv",
            ],
            journeys=args.journeys,
            seed=args.seed,
        )
    elif src == "yoochoose":
        f = (args.data_dir / "yoochoose" / "clicks-train.tsv") if args.data_dir else None
        sessions = loaders.load_yoochoose(f)
        desc.update(files=["yoochoose/clicks-train.tsv"])
    elif src == "jsonl":
        if args.file is None:
            raise UserError(
                "--source jsonl needs --file PATH (a file written by `lifeline export`)"
            )
        opener = opener_for(Settings(), Keys(_prefix(args)))
        # A sealed export (`lifeline export` of the live log) opens with the keys in Redis.
        redis = _redis(args) if _is_sealed_export(args.file) else None
        sessions = read_jsonl(args.file, redis=redis, opener=opener)
        desc.update(file=str(args.file))
    elif src in LIVE:
        read_at = int(time.time() * 1000)
        opener = opener_for(Settings(), Keys(_prefix(args)))
        sessions = export_redis(
            _redis(args), _prefix(args), progress=True, read_at_ms=read_at, opener=opener
        )
        desc.update(source="live", prefix=_prefix(args), read_at_ms=read_at)
    else:  # argparse's choices make this unreachable
        raise UserError(f"unknown source {src!r}")
    if opener is not None and opener.dropped_sessions:
        # Their data keys are gone: erased visitors (or past retention), in every copy.
        desc["unreadable_sessions_dropped"] = opener.dropped_sessions
        print(
            f"dropped {opener.dropped_sessions} sessions whose data keys are gone "
            "(erased or expired)",
            file=sys.stderr,
        )
    if opener is not None and opener.unopenable_keys:
        desc["unopenable_data_keys"] = opener.unopenable_keys
        print(
            f"{opener.unopenable_keys} data keys in Redis open with no configured master key: "
            "is LIFELINE_DATA_KEY this deployment's?",
            file=sys.stderr,
        )
    if args.limit is not None:
        sessions = sessions[: args.limit]
        desc["limit"] = args.limit
    if not sessions:
        raise UserError(f"--source {src} gave no sessions")
    desc["sessions"] = len(sessions)
    by_source: dict[str, int] = {}
    for s in sessions:
        by_source[s.source] = by_source.get(s.source, 0) + 1
    if len(by_source) > 1:
        desc["sessions_by_source"] = by_source
    desc["events"] = sum(len(s.events) for s in sessions)
    converted = [s.converted for s in sessions if s.converted is not None]
    if converted:
        desc["conversion_rate"] = round(sum(converted) / len(converted), 4)
    print(
        f"loaded {len(sessions)} sessions, {desc['events']} events from {src} "
        f"in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
    )
    return sessions, desc


def build_rows(args: argparse.Namespace, sessions: list):
    """Replay sessions into rows with the chosen engine."""
    from training.dataset import rows_frame, rows_frame_ray

    t0 = time.monotonic()
    if args.engine == "ray":
        import ray

        if not ray.is_initialized():
            kw: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
            if args.ray_address:
                ray.init(address=args.ray_address, **kw)
            else:
                ray.init(num_cpus=2, include_dashboard=False, **kw)
        df = rows_frame_ray(sessions)
    else:
        df = rows_frame(sessions, progress=True)
    print(f"replayed into {len(df)} rows in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return df


def _print_metrics(run: Any) -> None:
    print(f"{'model':<16}{'ROC AUC':>9}{'PR AUC':>9}{'F1@0.75':>9}{'Brier':>8}")
    for k, m in run.metrics.items():
        print(
            f"{k:<16}{m['roc_auc']:>9.3f}{m['pr_auc']:>9.3f}{m['f1_at_threshold']:>9.3f}{m['brier']:>8.3f}"
        )


def _command_line() -> str:
    return "lifeline " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# -- what a run learnt from: the live log, drift, the promotion guard -----------------------------
def _live_log_and_drift(
    args: argparse.Namespace, sessions: list, df: Any, run: Any, meta: dict[str, Any]
) -> list[str]:
    """The live-log and drift sections of a training report; their figures go into ``meta``.

    Drift (training/drift.py) compares, for ``--source live``, the live log's
    rows with the training rows of the model now serving (the registry's
    live model, else the bundled one) when its metadata keeps them; otherwise
    this run's test rows (its held-back sessions: the newest, or new users)
    with its own training rows.
    """
    from training import livelog
    from training.drift import Reference, drift_json, drift_markdown, drift_table

    sections = []
    if run.data.get("source") == "live":
        meta["live_log"] = summary = livelog.summarise(sessions, df)
        print(
            f"live log: {summary['sessions']} sessions, {summary['rows']} rows, conversion "
            f"{summary['conversion_rate']}, help accepted in {summary['sessions_accepted_help']} "
            f"and dismissed in {summary['sessions_dismissed_help']} sessions"
        )
        sections.append(livelog.markdown(summary))
    serving = _serving_reference(args) if run.data.get("source") == "live" else None
    if serving is not None:
        reference, ref_text = serving
        rows, rows_text = df, "the live event log's rows"
    else:
        reference = Reference.from_dict(meta["drift_reference"])
        ref_text = "this run's training rows"
        rows = run.split.test
        rows_text = f"this run's test rows ({rows['sid'].nunique()} held-back sessions)"
    if len(rows) == 0:
        return sections
    table = drift_table(reference, rows)
    kw = {"reference": ref_text, "compared": rows_text, "live_rows": len(rows)}
    meta["drift"] = drift_json(table, **kw)
    top = table.iloc[0] if len(table) else None
    if top is not None:
        print(
            f"drift of {rows_text} against {ref_text}: largest PSI {top['psi']:.3f} "
            f"({top['feature']}, {top['status']}); {meta['drift']['counts']['major']} features "
            "with a major shift"
        )
    sections.append(drift_markdown(table, **kw))
    return sections


def _serving_reference(args: argparse.Namespace) -> tuple[Any, str] | None:
    """The drift reference of the model the shards score with, if its metadata keeps one."""
    from training.drift import Reference

    reg = _registry(args)
    version = reg.live()
    if version:
        meta = reg.meta(version)
        text = f"the training rows of the live model {version}"
    else:
        meta = _stored_model(args, "bundled")[1]
        text = "the training rows of the bundled model (no model is live)"
    try:
        return Reference.from_dict(meta["drift_reference"]), text
    except (KeyError, ValueError):  # a model from before drift references were kept
        return None


def _add_guard_options(g: Any) -> None:
    g.add_argument(
        "--force",
        action="store_true",
        help="promote even when the promotion guard refuses (its figures are still recorded) "
        "and skip the feature-schema check (the shards still check)",
    )
    g.add_argument(
        "--auc-tolerance",
        type=float,
        default=0.005,
        help="refuse a candidate whose ROC AUC is this much below the live model's "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--brier-tolerance",
        type=float,
        default=0.005,
        help="refuse a candidate whose Brier score is this much above the live model's "
        "(default: %(default)s)",
    )


def _promote_guarded(
    args: argparse.Namespace, reg: Any, version: str, rows: Any
) -> tuple[int, str]:
    """Promote ``version`` unless the guard refuses (training/promotion.py); record either way.

    ``rows()`` gives the rows frame and source whose newest sessions are held
    back. Returns the exit code (0, or ``EXIT_REFUSED``) and a report section.
    """
    from training.promotion import promote_guarded

    result = promote_guarded(
        reg,
        version,
        rows,
        force=args.force,
        test_frac=args.test_frac,
        auc_tolerance=args.auc_tolerance,
        brier_tolerance=args.brier_tolerance,
    )
    rc = 0 if result.promoted else EXIT_REFUSED
    text = "\n".join(result.lines())
    print(text, file=sys.stderr if rc else sys.stdout)
    return rc, "## Promotion check\n\n```\n" + text + "\n```\n"


# -- train ------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from training.evaluate import report_plots, write_report
    from training.segments import fit_segments
    from training.train import XGBParams, train_and_evaluate

    if args.source == "yoochoose":
        raise UserError("YOOCHOOSE has no purchase label, so it cannot train an exit-risk model")
    sessions, desc = load_sessions(args)
    df = build_rows(args, sessions)
    if (df["label"] < 0).any():
        raise UserError("some sessions have no purchase label; cannot train an exit-risk model")
    params = XGBParams(
        max_depth=args.max_depth,
        eta=args.eta,
        num_boost_round=args.rounds,
        early_stopping_rounds=args.early_stopping,
        seed=args.seed,
        balance_classes=False,
    )
    t0 = time.monotonic()
    run = train_and_evaluate(
        df,
        name=args.name or desc["source"],
        data=desc,
        params=params,
        test_frac=args.test_frac,
        progress=True,
        label=args.label,
        horizon_s=args.horizon,
    )
    print(f"trained in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    meta = run.meta()
    meta["segments"] = fit_segments(df, seed=args.seed).to_dict()
    meta["command"] = _command_line()
    _print_metrics(run)
    seg = meta["segments"]
    print(f"segments: k={seg['k']} by silhouette {seg['scores']}: {', '.join(seg['names'])}")
    sections = _live_log_and_drift(args, sessions, df, run, meta)
    if args.compare_labels:
        from training.evaluate import label_comparison

        sections.insert(0, label_comparison(df, params))
    version, rc = None, 0
    if not args.no_register:
        reg = _registry(args)
        version = reg.save(run.xgb_model.to_bytes(), meta)
        print(f"registered model {version}")
        if args.promote:  # the guard measures both models on this run's held-back rows
            rc, text = _promote_guarded(args, reg, version, lambda: (df, desc["source"]))
            sections.append(text)
    report_dir = args.report_dir or DEFAULT_REPORTS / (args.name or desc["source"])
    path = write_report(
        run,
        report_dir,
        title=args.name or desc["source"],
        command=meta["command"],
        segments=seg,
        version=version,
    )
    text = path.read_text(encoding="utf-8")  # the sections go before the plots
    cut = text.find("\n## Plots")
    cut = len(text) if cut < 0 else cut
    path.write_text(text[:cut] + "".join("\n" + x for x in sections) + text[cut:], "utf-8")
    (Path(report_dir) / "segments.json").write_text(json.dumps(seg, indent=1) + "\n")
    print(f"report: {path}")
    if version is not None:  # the console shows a version's plots from the registry
        reg.save_plots(version, report_plots(path))
    if args.bundle:
        out = Path(args.bundle)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bundled.ubj").write_bytes(run.xgb_model.to_bytes())
        meta.setdefault("version", f"bundled-{desc['source']}")
        (out / "bundled.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        print(f"bundled model written to {out}")
    return rc


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="replay recorded sessions, train and evaluate an exit-risk model, register it",
        description="Replay sessions through the live session code (one feature row per event), "
        "train XGBoost on a time-ordered split with early stopping and class balancing, measure it "
        "next to logistic regression and an events-so-far baseline, fit behavioural segments, "
        "write a Markdown + PNG report and store the model in the registry.",
    )
    _add_source_options(p)
    g = p.add_argument_group("model")
    g.add_argument("--max-depth", type=int, default=5, help="tree depth (default: %(default)s)")
    g.add_argument("--eta", type=float, default=0.08, help="learning rate (default: %(default)s)")
    g.add_argument(
        "--rounds", type=int, default=400, help="at most this many trees (default: %(default)s)"
    )
    g.add_argument(
        "--early-stopping",
        type=int,
        default=30,
        help="stop after this many rounds without validation gain (default: %(default)s)",
    )
    g.add_argument(
        "--label",
        choices=LABELS,
        default=EXIT_SOON,
        help="what the model predicts: exit_soon = the visitor leaves within --horizon seconds "
        "without converting; no_purchase = the session ends without a purchase "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--compare-labels",
        action="store_true",
        help="also train every candidate label on the same split and add the comparison to "
        "the report (the evidence for --label; a few times the training time)",
    )
    g.add_argument(
        "--horizon",
        type=float,
        default=DEFAULT_HORIZON_S,
        help="seconds for --label exit_soon (default: %(default)s)",
    )
    g.add_argument(
        "--test-frac",
        type=float,
        default=0.2,
        help="newest share of sessions held out for testing (default: %(default)s)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--name",
        default=None,
        help="run name for the report folder and metadata (default: the source)",
    )
    o.add_argument(
        "--report-dir", type=Path, default=None, help="report folder (default: reports/NAME)"
    )
    o.add_argument(
        "--no-register", action="store_true", help="do not store the model in the registry"
    )
    o.add_argument(
        "--promote",
        action="store_true",
        help="make the new model live, unless it is worse than the live model on this run's "
        "held-back rows (the promotion guard; exit code 3 when it refuses)",
    )
    _add_guard_options(o)
    o.add_argument(
        "--bundle",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write DIR/bundled.ubj and DIR/bundled.json (actors/model/bundled is the shipped default model)",
    )
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_train))


# -- evaluate ---------------------------------------------------------------------------------------
def _stored_model(args: argparse.Namespace, ref: str) -> tuple[bytes, dict[str, Any], str]:
    """A model's bytes, metadata and version: ``bundled``, ``live`` or a registry version."""
    if ref == "bundled":
        from actors.model.scoring import BUNDLED_META, BUNDLED_MODEL

        if not BUNDLED_MODEL.is_file():
            raise UserError(
                f"{BUNDLED_MODEL} does not exist; build it with `lifeline train --bundle actors/model/bundled`"
            )
        meta = json.loads(BUNDLED_META.read_text())
        return BUNDLED_MODEL.read_bytes(), meta, "bundled"
    reg = _registry(args)
    version = reg.live() if ref == "live" else reg.resolve(ref)
    if version is None:
        raise UserError("no model is live; name a version (lifeline models) or use bundled")
    raw, meta = reg.load(version)
    return raw, meta, version


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import write_report
    from training.train import evaluate_booster, load_booster

    raw, meta, version = _stored_model(args, args.version)
    sessions, desc = load_sessions(args)
    df = build_rows(args, sessions)
    name = args.name or f"{version}-on-{desc['source']}"
    run = evaluate_booster(
        df, load_booster(raw), meta, name=name, data=desc, test_frac=args.test_frac
    )
    _print_metrics(run)
    report_dir = args.report_dir or DEFAULT_REPORTS / name
    path = write_report(run, report_dir, title=name, command=_command_line(), version=version)
    print(f"report: {path}")
    return 0


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a stored model on a data source and write a report",
        description="Evaluate an existing model (a registry version, the live one, or the bundled one) "
        "on the newest sessions of a data source, next to baselines fitted on the older ones, and write "
        "the Markdown + PNG report.",
    )
    p.add_argument(
        "--version",
        default="live",
        help="model to evaluate: a version (v0003-1a2b3c4d, v3, latest), 'live', or 'bundled' "
        "(default: live)",
    )
    _add_source_options(p)
    p.add_argument(
        "--test-frac",
        type=float,
        default=0.2,
        help="newest share of sessions to evaluate on (default: %(default)s)",
    )
    p.add_argument("--name", default=None, help="report name (default: VERSION-on-SOURCE)")
    p.add_argument(
        "--report-dir", type=Path, default=None, help="report folder (default: reports/NAME)"
    )
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_evaluate))


# -- replay -----------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from actors.core.sites import load_sites
    from actors.model.scoring import Scorer
    from training.replay import replay, write
    from training.replay_io import read_events_jsonl

    raw, meta, version = _stored_model(args, args.model)
    scorer = Scorer.from_bytes(raw, meta, version)
    sites = load_sites(args.sites or Settings().sites_file)
    site = sites.get(args.site)
    if site is None:
        print(
            f"site {args.site!r} is not in the sites file: replaying with the default rules",
            file=sys.stderr,
        )
        policy, detectors = PolicyConfig(), DetectorConfig()
    else:
        policy, detectors = site.policy, site.detectors
    t0 = time.monotonic()
    sessions = read_events_jsonl(args.events)
    n_events = sum(len(x.events) for x in sessions)
    print(
        f"read {len(sessions)} sessions, {n_events} events in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
    )
    t0 = time.monotonic()
    result = replay(sessions, scorer, site=args.site, policy=policy, detectors=detectors)
    summary = write(result, args.out)
    print(f"replayed with model {version} in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    print(
        f"{summary['sessions_offered_help']} of {summary['sessions']} sessions offered help "
        f"({100 * (summary['offered_share'] or 0):.1f} %, budget {100 * policy.budget:g} %)"
    )
    for name, part in summary["by_outcome"].items():
        print(
            f"  {name}: {part['offered_help']} of {part['sessions']} "
            f"({100 * (part['offered_share'] or 0):.1f} %)"
        )
    print(f"wrote {Path(args.out) / 'events.csv'} and {Path(args.out) / 'summary.json'}")
    return 0


def _add_replay(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="run recorded events through the shards' code offline: whom would Lifeline help",
        description='Replay recorded sessions (JSON lines {"sid": ..., "event": {...}}, '
        "as `lifeline import` writes) through exactly the code the shards run: session, "
        "features, scorer, policy and budget, in the events' own time order. Writes "
        "OUT/events.csv (sid,seq,type,risk,decision,holdout,reasons) and OUT/summary.json.",
    )
    p.add_argument("--events", type=Path, required=True, help="the JSON-lines events file")
    p.add_argument(
        "--site",
        default="default",
        help="site key whose rules apply (from the sites file; default rules if absent)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--model",
        default="bundled",
        help="bundled (default), live, or a registry version (v3, latest, ...)",
    )
    p.add_argument(
        "--sites",
        default=None,
        help="sites file (default: $LIFELINE_SITES, else cluster/sites.toml)",
    )
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_replay))


# -- challenger ---------------------------------------------------------------------------------------
def cmd_challenge(args: argparse.Namespace) -> int:
    from actors.core.features import FEATURE_SCHEMA_HASH

    reg = _registry(args)
    if args.stop:
        reg.clear_challenger()
        print("challenger stopped: the live model scores every session")
        return 0
    if args.version is None:
        current = reg.challenger()
        print(
            f"challenger {current[0]} scores {100 * current[1]:g} % of sessions"
            if current
            else "no challenger"
        )
        return 0
    version = reg.resolve(args.version)
    reg.set_challenger(version, args.share, expected_schema=FEATURE_SCHEMA_HASH)
    print(
        f"challenger {version} scores {100 * args.share:g} % of sessions (by session hash) "
        f"beside the live model {reg.live() or 'bundled'}; compare them with "
        "`lifeline report outcomes`"
    )
    return 0


def _add_challenge(sub: Any) -> None:
    p = sub.add_parser(
        "challenge",
        help="let a challenger model score a share of sessions beside the live one",
        description="Champion/challenger on live traffic: the challenger scores and decides for "
        "a share of sessions (chosen by a hash of the session id), the live model for the rest; "
        "every decision records the model that made it, and the outcome report compares them. "
        "Without VERSION: show the current challenger.",
    )
    p.add_argument("version", nargs="?", default=None, help="model version (v3, latest, ...)")
    p.add_argument(
        "--share", type=float, default=0.1, help="share of sessions it scores (default: 0.1)"
    )
    p.add_argument("--stop", action="store_true", help="stop the challenger")
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_challenge))


# -- models / promote -------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from actors.core.features import FEATURE_SCHEMA_HASH

    reg = _registry(args)
    models = reg.list()
    if args.json:
        print(json.dumps(models, indent=1))
        return 0
    if not models:
        print("no models in the registry; build one with `lifeline train`")
        return 0
    print(
        f"{'':2}{'version':<16}{'created':<27}{'source':<12}{'sessions':>9}{'ROC AUC':>9}{'PR AUC':>8}  schema"
    )
    for m in models:
        x = m.get("metrics", {}).get("xgboost", {})
        data = m.get("data", {})
        schema = (
            "ok"
            if m.get("feature_schema") == FEATURE_SCHEMA_HASH
            else f"MISMATCH ({m.get('feature_schema')})"
        )
        print(
            f"{'*' if m.get('live') else ' ':2}{m['version']:<16}{m.get('created', ''):<27}"
            f"{str(data.get('source', '?')):<12}{str(data.get('sessions', '?')):>9}"
            f"{x.get('roc_auc', float('nan')):>9.3f}{x.get('pr_auc', float('nan')):>8.3f}  {schema}"
        )
    print("* = live")
    return 0


def _add_models(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list the models in the registry (* marks the live one)",
        description="List stored models: version, creation time, training data, test metrics, and "
        "whether their feature schema matches this code's (a mismatched model cannot go live).",
    )
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_models))


def cmd_promote(args: argparse.Namespace) -> int:
    from training.loaders import DataError
    from training.promotion import NoRows

    reg = _registry(args)
    version = reg.resolve(args.version)

    def rows() -> tuple[Any, str]:
        try:
            sessions, desc = load_sessions(args)
        except (UserError, DataError) as exc:
            raise NoRows(str(exc)) from None
        return build_rows(args, sessions), desc["source"]

    return _promote_guarded(args, reg, version, rows)[0]


def _add_promote(sub: Any) -> None:
    p = sub.add_parser(
        "promote",
        help="make a stored model the live one, unless it is worse than the live one",
        description="Measure VERSION and the live model on the same held-back rows (by default "
        "the newest --test-frac of the live event log's sessions: the traffic the model is about "
        "to score), with the figures of every report, and refuse (exit code 3) when VERSION is "
        "worse: ROC AUC lower or Brier score higher than the live model's beyond the tolerances. "
        "The decision and both models' figures are printed and kept in the registry's history. "
        "Otherwise point the live model at VERSION and notify the running shards, which load it "
        "between two batches (no session or event is dropped). A model trained on another feature "
        "schema is refused here; with --force it is promoted anyway and the shards refuse it, keeping "
        "their current model and logging why.",
    )
    p.add_argument(
        "version",
        metavar="VERSION",
        help="a version (v0003-1a2b3c4d), its number (v3, 3), or 'latest'",
    )
    p.add_argument(
        "--test-frac",
        type=float,
        default=0.2,
        help="newest share of the source's sessions held back for the check (default: %(default)s)",
    )
    _add_guard_options(p)
    _add_source_options(p, default="live")
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_promote), engine="local")


# -- drift ------------------------------------------------------------------------------------------
def cmd_drift(args: argparse.Namespace) -> int:
    from training.drift import Reference, drift_markdown, drift_table

    _raw, meta, version = _stored_model(args, args.version)
    if "drift_reference" not in meta:
        raise UserError(
            f"model {version} keeps no drift reference (trained before they were kept); "
            "retrain it with `lifeline train`"
        )
    reference = Reference.from_dict(meta["drift_reference"])
    sessions, desc = load_sessions(args)
    df = build_rows(args, sessions)
    md = drift_markdown(
        drift_table(reference, df),
        reference=f"the training rows of model {version} ({reference.rows} rows)",
        compared=f"the rows of --source {desc['source']}",
        live_rows=len(df),
        top=args.top,
    )
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(md)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


def _add_drift(sub: Any) -> None:
    p = sub.add_parser(
        "drift",
        help="population stability index per feature: a source's rows against a model's training rows",
        description="Compare the feature distributions of a source (by default the live event log) "
        "with those of a model's training rows, kept in its metadata (bins and shares per feature), "
        "and print the population stability index per feature, largest first: below 0.1 stable, "
        "0.1 to 0.25 a moderate change, 0.25 and above a major shift.",
    )
    p.add_argument(
        "--version",
        default="live",
        help="the model: a version (v3, latest, ...), 'live' or 'bundled' (default: live)",
    )
    p.add_argument("--top", type=int, default=20, help="features to show (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    _add_source_options(p, default="live")
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_drift), engine="local")


# -- export -----------------------------------------------------------------------------------------
def _is_sealed_export(path: Path) -> bool:
    """Whether ``path`` is a sealed export (its first row has ``sealed``; sealed_export.py)."""
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return '"sealed"' in line
    except OSError:
        return False  # read_jsonl says what is wrong with it
    return False


def cmd_export(args: argparse.Namespace) -> int:
    from training.dataset import write_jsonl

    if args.source in LIVE:
        # The live log leaves sealed: an erasure later makes the copy unreadable too.
        from training.sealed_export import write_sealed_jsonl

        n, entries = write_sealed_jsonl(_redis(args), _prefix(args), args.out)
        print(f"wrote {n} sessions ({entries} log entries, sealed as stored) to {args.out}")
        print(
            f"train on them with: lifeline train --source jsonl --file {args.out} "
            "(reading needs this deployment's Redis and LIFELINE_DATA_KEY)"
        )
        return 0
    sessions, desc = load_sessions(args)
    n = write_jsonl(sessions, args.out)
    conv = sum(1 for s in sessions if s.converted)
    print(
        f"wrote {n} sessions ({conv} converted, {sum(len(s.events) for s in sessions)} events) from {desc['source']} to {args.out}"
    )
    print(f"train on them with: lifeline train --source jsonl --file {args.out}")
    return 0


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write recorded sessions (default: the live event log) to a JSON-lines file",
        description="Export sessions as JSON lines {sid, site, converted, events} with normalised "
        "events, so they can be kept, inspected and trained on (`lifeline train --source jsonl "
        "--file FILE`). From the live event log (the default), rows hold the log's entries still "
        "sealed under their visitors' data keys ({sid, site, sealed}): reading them needs the "
        "deployment's Redis and master key, and an erased visitor's rows stay unreadable.",
    )
    p.add_argument("--out", type=Path, required=True, help="the JSON-lines file to write")
    _add_source_options(p, default="live")
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_export), engine="local")


# -- import -----------------------------------------------------------------------------------------
IMPORT_SOURCES = ("taobao", "diginetica", "yoochoose")


def import_sessions(source: str, data_dir: Path | None, limit: int | None) -> list:
    """The sessions of one public data set (``training.loaders``), the first ``limit`` by start."""
    from training import loaders

    root = data_dir or loaders.default_data_dir()
    if source == "taobao":
        return loaders.load_taobao(root / "taobao" / "user-behavior.csv", limit_sessions=limit)
    if source == "diginetica":
        return loaders.load_diginetica(root / "diginetica", limit_sessions=limit)
    if source == "yoochoose":
        return loaders.load_yoochoose(root / "yoochoose" / "clicks-train.tsv", limit_sessions=limit)
    raise UserError(f"unknown source {source!r}; expected one of {', '.join(IMPORT_SOURCES)}")


def cmd_import(args: argparse.Namespace) -> int:
    from training.replay_io import write_events_jsonl

    t0 = time.monotonic()
    sessions = import_sessions(args.source, args.data_dir, args.limit)
    if not sessions:
        raise UserError(f"{args.source} gave no sessions")
    n = write_events_jsonl(sessions, args.out)
    conv = sum(1 for s in sessions if s.converted)
    print(
        f"wrote {n} events of {len(sessions)} sessions ({conv} with a purchase) from "
        f"{args.source} to {args.out}, ordered by event time, in {time.monotonic() - t0:.1f}s"
    )
    return 0


def _add_import(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="write a public data set as recorded traffic: one JSON line per event",
        description="Convert a data set of ../shared/data (Taobao, Diginetica, YOOCHOOSE) into "
        'JSON lines {"sid": ..., "event": {...}}, the event in the wire protocol\'s format '
        "(type, seq, ts and the type's fields), ordered by event time across sessions as "
        "recorded traffic is, for `lifeline replay --events FILE`. Every event is checked as the "
        "gateway would check it.",
    )
    p.add_argument("--source", choices=IMPORT_SOURCES, required=True, help="the data set")
    p.add_argument("--out", type=Path, required=True, help="the JSON-lines file to write")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N sessions by start time (default: all)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of the public data sets (default: $LIFELINE_DATA_DIR, else ../shared/data)",
    )
    p.set_defaults(func=_guarded(cmd_import))


# -- paper ------------------------------------------------------------------------------------------
def cmd_paper(args: argparse.Namespace) -> int:
    from training.online_shoppers import run_paper_protocol

    result = run_paper_protocol(args.file, folds=args.folds, seed=args.seed, limit=args.limit)
    md = result.markdown()
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# Online Shoppers: published protocol reproduced\n\nCommand: `{_command_line()}`\n\n{md}\n"
        )
        print(f"written to {args.out}", file=sys.stderr)
    return 0


def _add_paper(sub: Any) -> None:
    p = sub.add_parser(
        "paper",
        help="reproduce the published XGBoost result on UCI Online Shoppers",
        description="Cross-validated XGBoost on the 17 Online Shoppers session features with minority "
        "oversampling in the training folds; prints ROC AUC, PR AUC and accuracy next to the published "
        "0.937 / 0.754 / 90.65%%, plus XGBoost without oversampling and logistic regression.",
    )
    p.add_argument(
        "--file",
        type=Path,
        default=None,
        help="the CSV (default: ../shared/data/online_shoppers/...)",
    )
    p.add_argument(
        "--folds", type=int, default=10, help="cross-validation folds (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="fold shuffling and oversampling seed (default: %(default)s)",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="use only the first N sessions (quick runs)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_REPORTS / "online_shoppers.md",
        help="Markdown file to write (default: reports/online_shoppers.md)",
    )
    p.set_defaults(func=_guarded(cmd_paper))


# -- report -----------------------------------------------------------------------------------------
_SPANS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000}


def parse_since(text: str, now_ms: int) -> int:
    """``--since``: a span back from now (``7d``, ``12h``, ``30m``) or an ISO date or time (UTC
    unless it says otherwise), as epoch milliseconds."""
    from datetime import datetime, timezone

    unit = text[-1:].lower()
    if unit in _SPANS and text[:-1].isdigit():
        return now_ms - int(text[:-1]) * _SPANS[unit]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(
            f"--since {text!r}: give a span (7d, 12h, 30m) or a date (2026-05-01, 2026-05-01T12:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def cmd_report_outcomes(args: argparse.Namespace) -> int:
    from training.outcome_records import read_outcomes
    from training.outcomes_report import uplift_text, write_report

    since = parse_since(args.since, int(time.time() * 1000)) if args.since else None
    data = read_outcomes(_redis(args), _prefix(args), since, args.site, args.level)
    command = _command_line()
    if args.redis_url:  # the report is for reading and passing on: no password in it
        from cluster.config import redact_url

        command = command.replace(args.redis_url, redact_url(args.redis_url))
    path = write_report(data, args.out, command=command)
    t = data["totals"]
    print(
        f"{t['sessions']} sessions with a decision ({t['treated_n']} treated, "
        f"{t['holdout_n']} holdout); uplift {uplift_text(t)}"
    )
    print(f"report: {path} (data: {path.with_suffix('.json')})")
    return 0


def _add_report_outcomes(sub: Any) -> None:
    p = sub.add_parser(
        "outcomes",
        help="conversion of sessions offered help against the holdout, with intervals",
        description="Join every session's decisions, what was shown and what the visitor did "
        "(purchases and the site's goals), and compare the conversion of sessions offered help "
        "with that of holdout sessions, in total and by intervention kind, site, segment, model "
        "and day, with confidence intervals. Writes OUT/outcomes.md with PNG plots and "
        "OUT/outcomes.json (schema: training/outcomes.py).",
    )
    p.add_argument(
        "--since",
        default=None,
        help="only sessions whose first decision is this recent: 7d, 12h, 30m, or a UTC date "
        "or time (2026-05-01, 2026-05-01T12:00) (default: all that are kept, about a week)",
    )
    p.add_argument("--site", default=None, help="only this site's sessions (default: all sites)")
    p.add_argument(
        "--level",
        type=float,
        default=0.95,
        help="confidence level of the intervals (default: 0.95)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_REPORTS / "outcomes",
        help="folder to write outcomes.md, outcomes.json and the plots to (default: reports/outcomes)",
    )
    _add_redis_options(p)
    p.set_defaults(func=_guarded(cmd_report_outcomes))


REPORTS = (_add_report_outcomes,)  # `lifeline report NAME`: one function per report


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="reports on what the live system did (outcomes)",
        description="Reports on what the live system recorded.",
    )
    reports = p.add_subparsers(dest="report", required=True, metavar="REPORT")
    for add in REPORTS:
        add(reports)


# -- wiring -----------------------------------------------------------------------------------------
def add_commands(subparsers: Any) -> None:
    """Register train, evaluate, replay, challenge, models, promote, drift, export, import, paper
    and report."""
    for add in (
        _add_train,
        _add_evaluate,
        _add_replay,
        _add_challenge,
        _add_models,
        _add_promote,
        _add_drift,
        _add_export,
        _add_import,
        _add_paper,
        _add_report,
    ):
        add(subparsers)


def _guarded(fn: Any) -> Any:
    """Wrap a command so the errors a user can fix print one line and exit with code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        from training.loaders import DataError
        from training.registry import RegistryError

        try:
            return int(fn(args) or 0)
        except (UserError, DataError, RegistryError) as exc:
            name = fn.__name__.removeprefix("cmd_").replace("_", " ")  # report_outcomes
            print(f"lifeline {name}: error: {exc}", file=sys.stderr)
            return 2

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def main(argv: list[str] | None = None) -> int:
    """``python -m training.cli SUBCOMMAND ...``: the training commands without the main CLI."""
    logging.basicConfig(level=os.environ.get("LIFELINE_LOG", "WARNING"))
    parser = argparse.ArgumentParser(prog="lifeline", description="Lifeline training commands.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def main_train(argv: list[str] | None = None) -> int:
    """``lifeline train`` on its own (``argv`` without the subcommand name)."""
    return main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
