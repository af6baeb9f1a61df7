#!/usr/bin/env python3
"""Checks that docker-compose.yml runs the topology `scripts/cluster up --nodes 3` runs.

    python3 prometheus/tests/check_compose.py --cluster-dir DIR

DIR is a directory `scripts/cluster up --nodes 3 --dir DIR` is running from: its saved
command lines (node-N.cmd, redis.cmd) are what the script really started. The compose file
is read through `docker-compose config` (Debian's docker-compose, which validates it and
resolves anchors), so this sees what Compose would run. Checked:

- the same node services (node-1..N), each running the node with the same flags and values
  as the script's, apart from the addresses (--listen, --redis: container network vs loopback);
- every node gets the cluster secret; Redis runs with the same persistence flags;
- HAProxy renders haproxy/haproxy.cfg with haproxy/render for the same nodes, setting the same
  GR_ variables as scripts/cluster;
- prometheus/targets/ (mounted by the compose Prometheus) lists every node and HAProxy.

Exit 1 with one line per difference. Needs python3-yaml (a dependency of docker-compose).
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Flags whose values are addresses, which differ between containers and loopback.
ADDRESS_FLAGS = {"--listen", "--redis"}
# redis-server flags about where it listens and logs, not how it keeps data.
REDIS_LOCAL_FLAGS = {"--port", "--bind", "--protected-mode", "--daemonize", "--logfile", "--dir"}

errors = []


def fail(msg):
    errors.append(msg)


def flags(argv):
    """`--flag value` pairs of an argv (without the program) as a dict; a flag without a value
    maps to None."""
    out, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            fail(f"unexpected positional argument {a!r} in {argv}")
            i += 1
            continue
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[a] = argv[i + 1]
            i += 2
        else:
            out[a] = None
            i += 1
    return out


def read_cmd(path):
    return path.read_text().splitlines()


def compare(what, compose, script, ignore_values=(), ignore_flags=()):
    c = {k: v for k, v in compose.items() if k not in ignore_flags}
    s = {k: v for k, v in script.items() if k not in ignore_flags}
    for k in sorted(set(c) | set(s)):
        if k not in c:
            fail(f"{what}: compose lacks {k} (scripts/cluster passes {k} {s[k]})")
        elif k not in s:
            fail(f"{what}: compose passes {k} {c[k]}, scripts/cluster does not")
        elif k not in ignore_values and c[k] != s[k]:
            fail(f"{what}: {k} is {c[k]!r} in compose, {s[k]!r} in scripts/cluster")


def script_haproxy_vars():
    """The GR_ variables scripts/cluster sets for haproxy/render."""
    text = (ROOT / "scripts" / "cluster").read_text()
    m = re.search(r"\n((?:[^\n]*\n){0,6}?)[^\n]*\"\$root/haproxy/render\"", text)
    if not m:
        fail("scripts/cluster: no haproxy/render call found")
        return set()
    return set(re.findall(r"\b(GR_[A-Z_]+)=", m.group(0)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster-dir", required=True, type=Path)
    ap.add_argument("--compose-file", default=ROOT / "docker-compose.yml", type=Path)
    args = ap.parse_args()
    cdir = args.cluster_dir

    rendered = subprocess.run(
        ["docker-compose", "-f", str(args.compose_file), "config"],
        check=True,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin"},  # no GAMERELAY_* from this shell
    ).stdout
    services = yaml.safe_load(rendered)["services"]

    node_cmds = sorted(cdir.glob("node-*.cmd"), key=lambda p: int(p.stem.split("-")[1]))
    if not node_cmds:
        fail(f"{cdir}: no node-*.cmd (is scripts/cluster up running there?)")
    script_nodes = [p.stem for p in node_cmds]
    compose_nodes = sorted((n for n in services if re.fullmatch(r"node-\d+", n)), key=lambda n: int(n[5:]))
    if compose_nodes != script_nodes:
        fail(f"node services {compose_nodes} differ from the script's nodes {script_nodes}")

    for name in script_nodes:
        svc = services.get(name)
        if svc is None:
            continue
        script = flags(read_cmd(cdir / f"{name}.cmd")[1:])
        compose = flags([str(a) for a in svc.get("command", [])])
        compare(name, compose, script, ignore_values=ADDRESS_FLAGS)
        for k in ADDRESS_FLAGS & set(compose):
            if not compose[k]:
                fail(f"{name}: {k} has no value")
        if not svc.get("environment", {}).get("GAMERELAY_CLUSTER_SECRET"):
            fail(f"{name}: no GAMERELAY_CLUSTER_SECRET")
        if svc.get("build", {}).get("target") != "node":
            fail(f"{name}: not built from the Dockerfile's `node` stage")

    redis_script = read_cmd(cdir / "redis.cmd")
    redis_compose = [str(a) for a in services.get("redis", {}).get("command", [])]
    if not redis_compose or redis_compose[0] != "redis-server":
        fail("redis: compose does not run redis-server with explicit flags")
    else:
        compare("redis", flags(redis_compose[1:]), flags(redis_script[1:]), ignore_flags=REDIS_LOCAL_FLAGS)

    hx = services.get("haproxy", {})
    entry = " ".join(str(a) for a in hx.get("entrypoint", []))
    m = re.search(r"render --keep-env ((?:\S+=\S+ ?)+)", entry)
    if not m:
        fail("haproxy: the entrypoint does not run haproxy/render --keep-env NODE=ADDR...")
    else:
        rendered_nodes = [n.split("=")[0] for n in m.group(1).split()]
        if rendered_nodes != script_nodes:
            fail(f"haproxy: renders nodes {rendered_nodes}, the script {script_nodes}")
        for n in m.group(1).split():
            nid, addr = n.split("=", 1)
            if addr != f"{nid}:8080":
                fail(f"haproxy: node {nid} at {addr}, want the service's {nid}:8080")
    compose_vars = {k for k in hx.get("environment", {}) if k.startswith("GR_")}
    script_vars = script_haproxy_vars()
    if compose_vars != script_vars:
        fail(f"haproxy: compose sets {sorted(compose_vars)}, scripts/cluster {sorted(script_vars)}")

    targets = yaml.safe_load((ROOT / "prometheus" / "targets" / "gamerelay.yml").read_text()) or []
    listed = sorted(t for group in targets for t in group["targets"])
    if listed != sorted(f"{n}:8080" for n in compose_nodes):
        fail(f"prometheus/targets/gamerelay.yml lists {listed}, compose runs {compose_nodes}")
    hx_targets = yaml.safe_load((ROOT / "prometheus" / "targets" / "haproxy.yml").read_text()) or []
    if [t for group in hx_targets for t in group["targets"]] != ["haproxy:8404"]:
        fail("prometheus/targets/haproxy.yml must list haproxy:8404 (the compose operator frontend)")

    for e in errors:
        print("check_compose:", e, file=sys.stderr)
    print(f"check_compose: {len(script_nodes)} nodes, redis, haproxy: {'ok' if not errors else 'DIFFERENT'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
