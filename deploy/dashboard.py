"""The metric names a Grafana dashboard's PromQL queries read, so a test can check each against a live scrape."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "base" / "dashboard.json"
# PromQL words that look like identifiers but are not metrics (functions are recognised by their '(').
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def queries(path: Path = DASHBOARD) -> list[str]:
    """Every target expression of every panel."""
    dashboard = json.loads(path.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Identifiers that name series: label matchers, grouping lists, ranges, strings and functions removed."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def dashboard_metric_names(path: Path = DASHBOARD) -> set[str]:
    return set().union(*(metric_names(expr) for expr in queries(path)))
