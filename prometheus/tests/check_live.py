#!/usr/bin/env python3
"""Asks a running Prometheus (loaded with prometheus/prometheus.yml and its rules, scraping
nodes that have served some traffic) whether every dashboard query and every recording rule
returns data, and whether every alert rule is loaded and healthy.

    python3 prometheus/tests/check_live.py --url http://127.0.0.1:9090 [--instance HOST:PORT]
        [--allow-empty REGEX]

Dashboard variables are substituted ($job -> gamerelay, $instance -> --instance, or each
node in turn until one has data, $__rate_interval -> 1m). Exit 1 if anything returns nothing
(expressions matching --allow-empty excepted, e.g. HAProxy's series when no HAProxy is
scraped). Standard library
only; scripts/test-ops runs it against the local cluster under load.
"""

import argparse
import json
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_names  # noqa: E402


def api(url, path, **params):
    q = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{q}", timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def substitute(expr, values):
    for var, value in values.items():
        expr = expr.replace("${" + var + "}", value).replace("$" + var, value)
    return expr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--instance")
    ap.add_argument("--allow-empty", default=r"^$")
    args = ap.parse_args()
    url = args.url.rstrip("/")
    allow = re.compile(args.allow_empty)

    instances = [args.instance] if args.instance else []
    if not instances:
        found = api(url, "query", query='gamerelay_build_info{job="gamerelay"}')["result"]
        if not found:
            print("check_live: no gamerelay_build_info series: is anything scraped?", file=sys.stderr)
            return 1
        instances = sorted(s["metric"]["instance"] for s in found)
    values = {"job": "gamerelay", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

    exprs = []
    for path in sorted(check_names.DASHBOARDS_DIR.glob("*.json")):
        check_names.check_dashboard(path, set(), exprs)  # collects (where, expr)
    check_names.errors.clear()  # names are check_names.py's job
    rules = check_names.read_rules()
    exprs += [(f"{r[3]}: record {r[1]}", r[1]) for r in rules if r[0] == "record"]

    empty = []
    for where, expr in exprs:
        if where.endswith(("variable job", "variable instance")):
            continue
        # A per-node query passes when it has data for one of the nodes (the load need not
        # give every node every kind of event).
        for instance in instances if "$instance" in expr or "${instance}" in expr else instances[:1]:
            e = substitute(expr, {**values, "instance": instance})
            result = api(url, "query", query=e)["result"]
            ok = [s for s in result if s["value"][1] not in ("NaN", "+Inf", "-Inf")]
            if ok:
                break
        status = "ok   " if ok else ("allowed" if allow.search(e) else "EMPTY")
        print(f"{status} {len(ok):3d} {where}: {e}")
        if not ok and not allow.search(e):
            empty.append(where)

    groups = api(url, "rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    bad = []
    for kind, name, _, file in rules:
        r = loaded.get(name)
        if r is None or r.get("health") != "ok":
            bad.append(f"{file}: {kind} {name}: {'not loaded' if r is None else r.get('lastError')}")
    for b in bad:
        print("check_live:", b, file=sys.stderr)
    for e in empty:
        print("check_live: no data:", e, file=sys.stderr)
    print(f"{len(exprs) - len(empty)} passed, {len(empty) + len(bad)} failed")
    return 1 if empty or bad else 0


if __name__ == "__main__":
    sys.exit(main())
