"""The pieces of a console view (columns, tables, times), shared by every page's view.

A view is what one page shows, as JSON (serve/console/views.py says its shape).
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

View = dict[str, Any]  # one page's KPIs, charts, tables, forms, filters and notes


def col(key: str, label: str, num: bool = False, link: str | None = None) -> dict[str, Any]:
    """A table column: the row field ``key`` under ``label``; ``link``: a row field with a URL."""
    c: dict[str, Any] = {"key": key, "label": label}
    if num:
        c["num"] = True
    if link:
        c["link"] = link
    return c


def table(
    tid: str, title: str, columns: list[dict[str, Any]], rows: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {"id": tid, "title": title, "columns": columns, "rows": rows, **extra}


def when(ms: int | float | None) -> str:
    """A time in ms since the epoch as UTC text ("" for none)."""
    if not ms:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ms) / 1000.0)) + " UTC"


def to_csv(t: dict[str, Any]) -> str:
    """A view's table as CSV: its columns' labels, then each row's values in column order."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([c["label"] for c in t["columns"]])
    for row in t["rows"]:
        w.writerow(["" if row.get(c["key"]) is None else row.get(c["key"]) for c in t["columns"]])
    return out.getvalue()
