"""Reading serve_config.yaml: the one place Lifeline's Serve apps take their options and args from.

Shared by serve/apps/deployments.py (the nudge writer, the recommender, and
all apps at once for ``lifeline up``) and serve/apps/assistant.py (the help
chat's assistant alone), so neither imports the other to read the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIG_PATH = Path(__file__).with_name("serve_config.yaml")


def load_serve_config(path: Path | str | None = None) -> dict[str, Any]:
    """The Serve config file as a dict (``applications`` keyed as in the file)."""
    with open(path or CONFIG_PATH) as f:
        return yaml.safe_load(f)


def deployment_options(config: Mapping[str, Any], app: str, deployment: str) -> dict[str, Any]:
    """``.options(...)`` kwargs for one deployment from the Serve config file."""
    for a in config.get("applications", []):
        if a.get("name") == app:
            for d in a.get("deployments", []):
                if d.get("name") == deployment:
                    return {k: v for k, v in d.items() if k != "name"}
    return {}


def app_args(config: Mapping[str, Any], app: str) -> dict[str, Any]:
    """The ``args`` of one app in the Serve config file ({} if none)."""
    for a in config.get("applications", []):
        if a.get("name") == app:
            return dict(a.get("args") or {})
    return {}
