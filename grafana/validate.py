#!/usr/bin/env python3
"""Validates the dashboards in grafana/dashboards/ with the Grafana Foundation SDK.

    python3 -m venv .tmp/venv && .tmp/venv/bin/pip install -r grafana/requirements.txt
    .tmp/venv/bin/python grafana/validate.py        (scripts/test does this)

Each dashboard is decoded into the SDK's typed model (`models.dashboard.Dashboard.from_json`,
with every panel's options, field config and Prometheus queries decoded by the SDK's plugin
models) and encoded back. Whatever the schema of the pinned Grafana version (the SDK release
in grafana/requirements.txt) does not know is dropped by that round trip, so a dropped key,
a changed value, a panel type the SDK has no model for, or a query that is not a Prometheus
query is an error: the JSON uses a field or a shape Grafana 11.2 does not define.
"""

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"


def differences(ours, theirs, path=""):
    """Where `theirs` (the round trip) lost or changed something of `ours`."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [f"{path or '/'}: became {type(theirs).__name__}"]
        out = []
        for k, v in ours.items():
            if k not in theirs:
                out.append(f"{path}/{k}: not in the schema (dropped)")
            else:
                out += differences(v, theirs[k], f"{path}/{k}")
        return out
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [f"{path}: list changed"]
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} became {theirs!r}"]


def panels(dashboard):
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])


def validate(path, known_panel_types):
    data = json.loads(path.read_text())
    problems = []
    for p in panels(data):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("type") != "row" and p.get("type") not in known_panel_types:
            problems.append(f"{where}: panel type {p.get('type')!r} has no SDK model")
        for t in p.get("targets", []):
            if not isinstance(cogruntime.dataquery_from_json(t, "prometheus"), prometheus.Dataquery):
                problems.append(f"{where}: target {t.get('refId')} is not a Prometheus query")
    model = Dashboard.from_json(data)
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    problems += differences(data, back)
    return problems


def main():
    plugins.register_default_plugins()
    known = set(cogruntime.Runtime().panelcfg_variants)
    files = sorted(DASHBOARDS.glob("*.json"))
    if not files:
        print(f"validate: no dashboards in {DASHBOARDS}", file=sys.stderr)
        return 1
    failed = 0
    for path in files:
        problems = validate(path, known)
        for p in problems:
            print(f"validate: {path.name}: {p}", file=sys.stderr)
        failed += bool(problems)
        print(f"validate: {path.name}: {'ok' if not problems else f'{len(problems)} problems'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
