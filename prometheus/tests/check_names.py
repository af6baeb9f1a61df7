#!/usr/bin/env python3
"""Checks that the dashboards and the Prometheus rules only use names that exist.

    python3 prometheus/tests/check_names.py [--promtool PATH]

(Python 3.8+, standard library only; scripts/test runs it.)

- Every dashboard in grafana/dashboards/ parses as JSON and is well formed: unique panel
  ids, panels inside the 24-column grid without overlapping, every query with an expression
  and a unique refId, the Prometheus datasource given by the `datasource` variable, and
  every `$variable` declared (or one of Grafana's `$__...`).
- Every metric name in a dashboard query, a dashboard variable or a rule expression is
  either a metric listed in docs/METRICS.md or a recording rule defined in
  prometheus/rules/ (and listed in docs/METRICS.md too).
- Every recording rule and alert is listed in docs/METRICS.md; every recording rule is used
  by a dashboard or by another rule.
- With promtool (found on PATH or given), every dashboard expression, its variables
  substituted, parses as PromQL (`promtool check rules` on a generated rule file).
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METRICS_MD = ROOT / "docs" / "METRICS.md"
RULES_DIR = ROOT / "prometheus" / "rules"
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"

# PromQL words that look like names but are not metrics.
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count_over_time", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "max_over_time", "min_over_time", "minute",
    "month", "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets",
    "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev_over_time",
    "stdvar_over_time", "sum_over_time", "time", "timestamp", "vector", "year",
}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}
# Grafana's own variables.
GRAFANA_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
# What dashboard variables become when an expression is checked with promtool.
SUBSTITUTE = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

errors = []


def fail(msg):
    errors.append(msg)


def documented_names():
    """Every `name` in backticks in METRICS.md."""
    return set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", METRICS_MD.read_text()))


def read_rules():
    """(kind, name, expr, file) for every rule: a small reader for our rule files' shape
    (`- record:` / `- alert:` then `expr:` inline or as a block scalar)."""
    rules = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        lines = path.read_text().splitlines()
        current = None
        i = 0
        while i < len(lines):
            line = lines[i]
            m = re.match(r"^\s*-\s+(record|alert):\s*(\S+)\s*$", line)
            if m:
                current = [m.group(1), m.group(2), None, path.name]
                rules.append(current)
            m = re.match(r"^(\s*)expr:\s*(.*)$", line)
            if m and current is not None:
                value = m.group(2).strip()
                if value in (">-", ">", "|", "|-"):
                    indent = len(m.group(1))
                    block = []
                    while i + 1 < len(lines) and (
                        not lines[i + 1].strip() or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
                    ):
                        i += 1
                        block.append(lines[i].strip())
                    value = " ".join(b for b in block if b)
                elif value[:1] in ("'", '"'):
                    value = value[1:-1]
                current[2] = value
            i += 1
        declared = len(re.findall(r"^\s*-\s+(?:record|alert):", path.read_text(), re.M))
        got = sum(1 for r in rules if r[3] == path.name and r[2])
        if declared != got:
            fail(f"{path.name}: read {got} rule expressions of {declared} rules")
    return rules


def metric_names(expr):
    """The metric (and recording rule) names an expression selects."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)
    s = re.sub(r"\boffset\s+\S+", "", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)", s):
        word = m.group(1)
        rest = s[m.end():].lstrip()
        if word.lower() in KEYWORDS:
            continue
        if (word in FUNCTIONS or word in AGGREGATIONS) and (rest.startswith("(") or re.match(r"^(by|without)\b", rest)):
            continue
        if re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def variable_query_expr(query):
    """The PromQL inside a Grafana Prometheus variable query."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*(?:query_result|metrics)\((.*)\)\s*", query)
    return m.group(1) if m else query


def check_dashboard(path, known, exprs_out):
    try:
        dash = json.loads(path.read_text())
    except ValueError as e:
        fail(f"{path.name}: not JSON: {e}")
        return
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dash:
            fail(f"{path.name}: no {key}")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
        fail(f"{path.name}: needs a `datasource` variable of type datasource (prometheus)")

    def check_vars(where, text):
        for var in re.findall(r"\$\{?([a-zA-Z_][a-zA-Z0-9_]*)", text):
            if var not in variables and var not in GRAFANA_VARS:
                fail(f"{path.name}: {where}: undeclared variable ${var}")

    def check_expr(where, expr):
        check_vars(where, expr)
        for name in sorted(metric_names(expr)):
            if name not in known:
                fail(f"{path.name}: {where}: {name} is neither in docs/METRICS.md nor a recording rule")
        exprs_out.append((f"{path.name}: {where}", expr))

    for v in variables.values():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            check_expr(f"variable {v['name']}", variable_query_expr(q))

    ids = set()
    cells = {}
    for panel in dash.get("panels", []):
        title = panel.get("title", "?")
        pid = panel.get("id")
        if pid in ids:
            fail(f"{path.name}: panel id {pid} used twice")
        ids.add(pid)
        g = panel.get("gridPos", {})
        x, y, w, h = g.get("x", -1), g.get("y", -1), g.get("w", 0), g.get("h", 0)
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > 24:
            fail(f"{path.name}: panel '{title}' outside the grid: {g}")
        for cx in range(max(x, 0), min(x + w, 24)):
            for cy in range(max(y, 0), y + h):
                if (cx, cy) in cells:
                    fail(f"{path.name}: panel '{title}' overlaps '{cells[(cx, cy)]}'")
                    break
                cells[(cx, cy)] = title
            else:
                continue
            break
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"{path.name}: panel '{title}' does not use the datasource variable")
        targets = panel.get("targets") or []
        if not targets:
            fail(f"{path.name}: panel '{title}' has no query")
        refs = set()
        for t in targets:
            ref = t.get("refId")
            if not ref or ref in refs:
                fail(f"{path.name}: panel '{title}': missing or repeated refId {ref!r}")
            refs.add(ref)
            expr = t.get("expr", "")
            if not expr.strip():
                fail(f"{path.name}: panel '{title}' query {ref} has no expression")
                continue
            check_expr(f"panel '{title}' query {ref}", expr)
            check_vars(f"panel '{title}' legend {ref}", t.get("legendFormat", "").replace("{{", "").replace("}}", ""))


def promtool_parse(promtool, exprs):
    """Parses expressions with promtool: each becomes a recording rule of a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dashboard-exprs.yml"
        lines = ["groups:", "  - name: dashboard-expressions", "    rules:"]
        for i, (_, expr) in enumerate(exprs):
            e = expr
            for var, value in SUBSTITUTE.items():
                e = e.replace("${" + var + "}", value).replace("$" + var, value)
            e = re.sub(r"\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?", ".*", e)
            lines.append(f"      - record: check:dashboard_expr_{i}")
            lines.append("        expr: " + json.dumps(e))
        path.write_text("\n".join(lines) + "\n")
        run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        if run.returncode != 0:
            out = run.stdout + run.stderr
            bad = sorted({int(i) for i in re.findall(r"check:dashboard_expr_(\d+)", out)})
            where = "; ".join(f"{exprs[i][0]}: {exprs[i][1]}" for i in bad)
            fail(f"promtool cannot parse {where or 'a dashboard expression'}:\n{out}")


def main(argv):
    promtool = None
    if "--promtool" in argv:
        promtool = argv[argv.index("--promtool") + 1]
    else:
        promtool = shutil.which("promtool")

    documented = documented_names()
    rules = read_rules()
    records = {r[1] for r in rules if r[0] == "record"}
    # A histogram's series: <name>_bucket, _sum and _count.
    series = {
        f"{n}_{s}" for n in documented for s in ("bucket", "sum", "count") if n.endswith(("_seconds", "_bytes", "_frames"))
    }
    known = documented | records | series

    for kind, name, expr, file in rules:
        if name not in documented:
            fail(f"{file}: {kind} {name} is not listed in docs/METRICS.md")
        for m in sorted(metric_names(expr or "")):
            if m not in known:
                fail(f"{file}: {kind} {name}: {m} is neither in docs/METRICS.md nor a recording rule")

    exprs = []
    dashboards = sorted(DASHBOARDS_DIR.glob("*.json"))
    if not dashboards:
        fail("no dashboards in grafana/dashboards/")
    for path in dashboards:
        check_dashboard(path, known, exprs)

    used = set()
    for _, expr in exprs:
        used |= metric_names(expr)
    for _, name, expr, _ in rules:
        used |= metric_names(expr or "") - {name}
    for name in sorted(records - used):
        fail(f"recording rule {name} is used by no dashboard and no rule")

    if promtool:
        promtool_parse(promtool, exprs)
    else:
        print("check_names: promtool not found; dashboard expressions not parsed", file=sys.stderr)

    if errors:
        for e in errors:
            print("check_names:", e, file=sys.stderr)
        print(f"0 passed, {len(errors)} failed", file=sys.stderr)
        return 1
    print(
        f"check_names: {len(dashboards)} dashboards ({len(exprs)} expressions), {len(rules)} rules: "
        "every name exists" + (", every expression parses" if promtool else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
