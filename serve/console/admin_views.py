"""The Models and Sites pages' views, from the registry listing and the sites in force.

Promotion and site edits are offered only to an admin (the routes check
again: serve/console/models.py, serve/console/sites.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from serve.console import models, sites
from serve.console.accounts import Operator
from serve.console.shapes import View, col, table, when

METRICS_SHOWN = ("roc_auc", "brier", "ece", "pr_auc", "log_loss")


def _figures(metrics: Any) -> str:
    if not isinstance(metrics, dict):
        return ""
    shown = [(k, metrics[k]) for k in METRICS_SHOWN if isinstance(metrics.get(k), int | float)]
    return ", ".join(f"{k} {v:.3f}" for k, v in shown)


async def models_view(request: web.Request) -> View:
    listing = await asyncio.to_thread(models._listing, models.registry(request))
    admin = request["operator"].may("admin")
    rows = []
    for v in listing["versions"]:
        state = "live" if v["live"] else "challenger" if v["challenger"] else ""
        row = {
            "version": v["version"],
            "created": when(v.get("created_ms")) or v.get("created", ""),
            "state": state,
            "figures": _figures(v.get("metrics")),
            "schema": "ok" if v["schema_ok"] else "different features",
            "plots": len(v["plots"]),
        }
        if admin and not v["live"] and v["schema_ok"]:
            row["_actions"] = [
                {
                    "label": "Promote",
                    "method": "POST",
                    "url": f"/api/models/{v['version']}/promote",
                    "body": {},
                    "confirm": f"Make {v['version']} live (if the guard allows)?",
                },
                {
                    "label": "Force promote",
                    "method": "POST",
                    "secondary": True,
                    "url": f"/api/models/{v['version']}/promote",
                    "body": {"force": True},
                    "confirm": f"Make {v['version']} live even if it is worse?",
                },
            ]
        rows.append(row)
    history = [
        {
            "when": when(h.get("at_ms")),
            "version": h.get("version"),
            "previous": h.get("previous"),
            "result": "refused" if h.get("refused") else "promoted",
            "check": json.dumps(h.get("check", {}).get("verdict", ""))[:120],
        }
        for h in listing["history"]
    ]
    view: View = {
        "kpis": [
            {"label": "Serving", "value": listing["serving"]},
            {"label": "Challenger", "value": (listing["challenger"] or {}).get("version", "none")},
            {"label": "Roll back to", "value": listing["rollback_to"] or "none"},
        ],
        "tables": [
            table(
                "versions",
                "Registered versions",
                [
                    col("version", "Version"),
                    col("created", "Registered"),
                    col("state", "State"),
                    col("figures", "Held-back figures"),
                    col("schema", "Feature schema"),
                    col("plots", "Plots", True),
                ],
                rows,
                empty="No registered model: the shards score with the bundled one. "
                "`lifeline train` registers one.",
            ),
            table(
                "history",
                "Promotions",
                [
                    col("when", "When"),
                    col("version", "Version"),
                    col("previous", "Previous"),
                    col("result", "Result"),
                    col("check", "Guard"),
                ],
                history,
            ),
        ],
        "images": [
            {
                "title": f"{listing['serving']}: {name}",
                "src": f"/api/models/{listing['serving']}/plots/{name}",
            }
            for v in listing["versions"]
            if v["live"]
            for name in v["plots"][:4]
        ],
    }
    if admin and listing["rollback_to"]:
        view["kpis"].append({"label": "Roll back", "value": listing["rollback_to"]})
        view["tables"][0]["rows"].insert(
            0,
            {
                "version": f"(roll back to {listing['rollback_to']})",
                "_actions": [
                    {
                        "label": "Roll back",
                        "method": "POST",
                        "url": "/api/models/rollback",
                        "body": {},
                        "confirm": f"Make {listing['rollback_to']} live again?",
                    }
                ],
            },
        )
    return view


async def sites_view(request: web.Request) -> View:
    response = await sites.list_sites(request)
    doc = json.loads(response.text or "{}")
    if response.status != 200:
        raise ValueError(doc.get("detail", "sites file unreadable"))
    op: Operator = request["operator"]
    site_rows, rule_rows, forms = [], [], []
    for s in doc["sites"]:
        site_rows.append(
            {
                "key": s["key"],
                "name": s["name"]["value"],
                "source": s["source"],
                "origins": ", ".join(s["origins"]["value"]),
                "goals": ", ".join(s["goals"]["value"]),
                "consent_policy": s["consent_policy"]["value"],
                "refused": s.get("override_refused", ""),
            }
        )
        for group in ("policy", "detectors", "retention"):
            for rule, v in s[group].items():
                rule_rows.append(
                    {
                        "site": s["key"],
                        "group": group,
                        "rule": rule,
                        "value": v["value"],
                        "from": v["from"],
                    }
                )
        if op.may("admin"):
            forms.append(
                {
                    "id": f"site-{s['key']}",
                    "title": f"Edit site {s['key']} (JSON of its table)",
                    "method": "PUT",
                    "url": f"/api/sites/{s['key']}",
                    "submit": "Validate and apply",
                    "body_field": "table",
                    "done": "Applied: gateways and shards pick it up within a second.",
                    "fields": [
                        {
                            "name": "table",
                            "label": f"[sites.{s['key']}]",
                            "type": "textarea",
                            "json": True,
                            "value": json.dumps(s["table"], indent=2),
                        }
                    ],
                }
            )
    return {
        "kpis": [
            {"label": "Rules version", "value": doc["version"]},
            {"label": "Sites", "value": len(doc["sites"])},
        ],
        "tables": [
            table(
                "sites",
                "Sites",
                [
                    col("key", "Key"),
                    col("name", "Name"),
                    col("source", "From"),
                    col("origins", "Allowed origins"),
                    col("goals", "Goals"),
                    col("consent_policy", "Consent policy"),
                    col("refused", "Override refused"),
                ],
                site_rows,
            ),
            table(
                "rules",
                "Policy, detector and retention (days) rules",
                [
                    col("site", "Site"),
                    col("group", "Group"),
                    col("rule", "Rule"),
                    col("value", "Value"),
                    col("from", "From"),
                ],
                rule_rows,
            ),
        ],
        "forms": forms,
        "notes": [
            f"Baseline: {doc['file']}. Edits are stored as overrides in Redis, validated "
            "by the same parser, audited, and applied without a restart."
        ],
    }
