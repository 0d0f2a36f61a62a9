#!/usr/bin/env python3
"""Checks the deployment files as far as this machine can (no Docker engine, no cluster).

    python deploy/lint.py [--bin-dir target/debug]   # what `make lint-deploy` runs
    python deploy/lint.py --self-test                # the checks catch broken inputs

Checks:
  - every YAML file parses; the Grafana dashboard is valid JSON;
  - promtool check config / check rules / test rules on deploy/prometheus;
  - every metric an alert rule or dashboard queries is defined where it is emitted
    (see METRIC_SOURCES);
  - Helm (deploy/lint_chart.py): helm lint and helm template over the default
    and helm/overwatch/ci/*-values.yaml, every manifest validated against the
    Kubernetes schemas offline, wiring, the rendered config and environment
    accepted by the real binaries, memory limit vs the gateway's bound; the
    chart refuses each helm/overwatch/ci-refused/*-values.yaml with its message;
  - image: the Dockerfile's build-stage `cargo build` succeeds on exactly the
    files its COPY lines bring (a temporary build context);
  - compose: build contexts, Dockerfiles and their targets, and bind-mounted
    files exist; the OVERWATCH__* settings given to gateway and workerd are
    accepted by the real binaries (--check-config).
Needs the project venv (PyYAML, kubernetes-validate), promtool and helm, all from
`make provision`. Exits 1 listing every problem.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

from lint_chart import check_chart_text, check_helm, check_memory_limit, check_wiring, validate_manifests
from lint_common import PROBLEMS, clean_env, load_yaml, path, problem, run


# --- metrics -------------------------------------------------------------------

# Metric names live with the code that emits them: `pub const NAME: &str = "overwatch_…"`.
METRIC_SOURCES = [
    ("shared", "src", "runtime", "metrics.rs"),
    ("shared", "src", "enrich.rs"),
    ("gateway", "src", "telemetry.rs"),
    ("gateway", "src", "ratelimit", "cluster.rs"),
    ("workerd", "src", "telemetry.rs"),
]


def known_metrics():
    names = set()
    for parts in METRIC_SOURCES:
        with open(path(*parts)) as f:
            names |= set(re.findall(r'pub const [A-Z_]+: &str = "(overwatch_[a-z0-9_]+)"', f.read()))
    return names


def metrics_in(text):
    return set(re.findall(r"\b(overwatch_[a-z0-9_]+)\b", text))


def unknown_metrics(text, known):
    out = []
    for m in sorted(metrics_in(text)):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        if m not in known and base not in known:
            out.append(m)
    return out


def check_prometheus(known):
    rules = path("deploy", "prometheus", "alerts.yml")
    tests = path("deploy", "prometheus", "alerts_test.yml")
    conf = path("deploy", "prometheus", "prometheus.yml")
    for f in (rules, tests, conf):
        load_yaml(f)
    with open(rules) as f:
        text = f.read()
    for m in unknown_metrics(text, known):
        problem(rules, "queries %s, which no binary exports" % m)
    doc = yaml.safe_load(text) or {}
    with open(path("docs", "operations.md")) as f:
        ops = f.read()
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            name = r.get("alert")
            url = r.get("annotations", {}).get("runbook_url", "")
            if not name:
                continue
            if not url.endswith("#" + name.lower()):
                problem(rules, "%s: runbook_url must point at docs/operations.md#%s" % (name, name.lower()))
            if "### %s\n" % name not in ops:
                problem(path("docs", "operations.md"), "no runbook entry (### %s)" % name)
    run(["promtool", "check", "rules", rules], rules)
    run(["promtool", "test", "rules", os.path.basename(tests)], tests, cwd=os.path.dirname(tests))
    # The compose config names rule files by their in-container path.
    with tempfile.TemporaryDirectory() as d:
        c = yaml.safe_load(open(conf))
        c["rule_files"] = [rules]
        local = os.path.join(d, "prometheus.yml")
        with open(local, "w") as f:
            yaml.safe_dump(c, f)
        run(["promtool", "check", "config", local], conf)


def check_dashboards(known):
    d = path("deploy", "grafana", "dashboards")
    for name in sorted(os.listdir(d)):
        f = os.path.join(d, name)
        try:
            dash = json.load(open(f))
        except (OSError, ValueError) as e:
            problem(f, "not valid JSON: %s" % e)
            continue
        exprs = [t.get("expr", "") for p in dash.get("panels", []) for t in p.get("targets", [])]
        if not exprs:
            problem(f, "no panel queries anything")
        for m in unknown_metrics("\n".join(exprs), known):
            problem(f, "queries %s, which no binary exports" % m)
    for root, _, files in os.walk(path("deploy", "grafana", "provisioning")):
        for n in files:
            load_yaml(os.path.join(root, n))


def check_published(services, where):
    """Only the gateway is published on every interface; anything else at most on 127.0.0.1."""
    for name, svc in (services or {}).items():
        for p in (svc or {}).get("ports") or []:
            spec = str(p.get("published", "")) if isinstance(p, dict) else str(p)
            if name != "gateway" and not spec.startswith("127.0.0.1:"):
                problem(where, "service %s publishes %s on every host interface (only the gateway may)" % (name, spec))


def check_compose(bins):
    file = path("docker-compose.yml")
    check_published((load_yaml(file) or {}).get("services"), file)
    doc = load_yaml(file) or {}
    for name, svc in (doc.get("services") or {}).items():
        build = svc.get("build")
        if isinstance(build, dict):
            ctx = path(build.get("context", "."))
            dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
            if not os.path.isfile(dockerfile):
                problem(file, "service %s: Dockerfile %s does not exist" % (name, build.get("dockerfile")))
            elif build.get("target"):
                text = open(dockerfile).read()
                if not re.search(r"^FROM .+ AS %s\s*$" % re.escape(build["target"]), text, re.M | re.I):
                    problem(file, "service %s: %s has no stage %s" % (name, build.get("dockerfile"), build["target"]))
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else ""
            if src.startswith("./") and not os.path.exists(path(src)):
                problem(file, "service %s mounts %s, which does not exist" % (name, src))
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        settings = {k: str(v) for k, v in env.items() if k.startswith("OVERWATCH__")}
        if name == "gateway":
            run([os.path.join(bins, "gateway"), "--check-config"], file + " (gateway)", env=clean_env(settings))
        elif name == "workerd":
            run([os.path.join(bins, "workerd"), "check-config"], file + " (workerd)", env=clean_env(settings))
        elif settings:
            problem(file, "service %s has OVERWATCH__ settings but is neither gateway nor workerd" % name)


# --- image -----------------------------------------------------------------------

IGNORED = ("target", ".data", ".git")


def build_stage(text):
    """The COPY sources/destinations and the cargo command of the Dockerfile's build stage."""
    copies, command, stage = [], None, None
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() == "FROM":
            stage = words[-1] if len(words) >= 4 and words[-2].upper() == "AS" else None
            continue
        if stage != "build":
            continue
        if words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            args = [w for w in words[1:] if not w.startswith("--")]
            copies.append((args[:-1], args[-1]))
        if words[0].upper() == "RUN" and "cargo build" in line:
            cmd = line[line.index("cargo build"):].split("&&")[0].split()
            command = cmd
    return copies, command


def image_context(copies, into):
    """Lays out the files the build stage copies, as the image's WORKDIR holds them."""
    import shutil
    for sources, dest in copies:
        for src in sources:
            full = path(src)
            target = os.path.join(into, dest if dest not in ("./", ".") else "", os.path.basename(src) if dest in ("./", ".") else "")
            if os.path.isdir(full):
                shutil.copytree(full, target, ignore=shutil.ignore_patterns(*IGNORED, "corpus", "artifacts"))
            elif os.path.isfile(full):
                os.makedirs(os.path.dirname(target) or into, exist_ok=True)
                shutil.copy2(full, target)
            else:
                problem(path("deploy", "docker", "Dockerfile"), "COPY %s: no such file in the build context" % src)


def check_image(dockerfile_text=None, build=True):
    """The build stage's cargo command succeeds on exactly the files the
    Dockerfile copies (debug profile and --offline, to reuse this machine's
    build; the release profile only changes optimisation)."""
    where = path("deploy", "docker", "Dockerfile")
    text = dockerfile_text if dockerfile_text is not None else open(where).read()
    copies, command = build_stage(text)
    if not command:
        problem(where, "the build stage has no `cargo build` command")
        return False
    with tempfile.TemporaryDirectory(prefix="ow-image-") as ctx:
        image_context(copies, ctx)
        env = dict(os.environ, CARGO_TARGET_DIR=path("target"))
        meta = run(["cargo", "metadata", "--locked", "--offline", "--format-version", "1", "--no-deps"],
                   where, cwd=ctx, env=env)
        if meta is False or not build:
            return meta is not False
        cmd = [w for w in command if w != "--release"] + ["--offline"]
        r = subprocess.run(cmd, cwd=ctx, env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            problem(where, "`%s` on the copied build context failed:\n%s" % (" ".join(cmd), r.stderr[-4000:]))
            return False
        print("lint-deploy: image build stage ok: `%s` on %d copied paths" % (" ".join(cmd), sum(len(s) for s, _ in copies)))
        return True


# --- self test -------------------------------------------------------------------

def self_test():
    """Each check flags a broken input and passes a good one."""
    known = {"overwatch_http_requests_total", "overwatch_http_request_duration_seconds"}
    assert unknown_metrics('rate(overwatch_http_requests_total[5m])', known) == []
    assert unknown_metrics('overwatch_http_request_duration_seconds_bucket', known) == []
    assert unknown_metrics('rate(overwatch_http_requests[5m])', known) == ["overwatch_http_requests"]
    values = {"gateway": {"port": 8080, "resources": {"cpu": 1}}, "config": ""}
    readme = "`gateway.port` `gateway.resources` `config`"
    good = {"a.yaml": "metadata:\n  labels:\n    {{- include \"x\" . | nindent 4 }}\nspec:\n  port: {{ .Values.gateway.port }}\n"}
    assert check_chart_text(good, values, readme, "t") == [], check_chart_text(good, values, readme, "t")
    missing = {"a.yaml": "port: {{ .Values.gateway.prot }}\n"}
    assert any("gateway.prot" in p for p in check_chart_text(missing, values, readme, "t"))
    broken = {"a.yaml": "spec:\n  - a\n  b: {{ .Values.gateway.port }}\n"}
    assert any("not YAML" in p for p in check_chart_text(broken, values, readme, "t"))
    undocumented = check_chart_text({}, values, "`gateway.resources` `config`", "t")
    assert [p for p in undocumented if "documented" in p] == [
        "t/README.md: value `gateway.port` is not documented"], undocumented
    before = len(PROBLEMS)
    check_memory_limit("memory bound %d bytes" % (100 << 20), {"limits": {"memory": "512Mi"}}, "t")
    assert len(PROBLEMS) == before, PROBLEMS[before:]
    check_memory_limit("memory bound %d bytes" % (500 << 20), {"limits": {"memory": "512Mi"}}, "t")
    assert len(PROBLEMS) == before + 1 and "below the configured worst case" in PROBLEMS[-1]
    del PROBLEMS[before:]
    # Rendered manifests: a schema violation and a probe on an undeclared port.
    pod = {"metadata": {"labels": {"app": "g"}}, "spec": {"containers": [{
        "name": "gateway", "image": "g", "ports": [{"name": "operations", "containerPort": 9090}],
        "livenessProbe": {"httpGet": {"path": "/health/live", "port": "operations"}}}]}}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "g"},
           "spec": {"selector": {"matchLabels": {"app": "g"}}, "template": pod}}
    assert validate_manifests([dep], "t") == 1 and len(PROBLEMS) == before, PROBLEMS[before:]
    check_wiring([dep], "t")
    assert len(PROBLEMS) == before, PROBLEMS[before:]
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = "http"
    bad["spec"]["replicas"] = "two"
    validate_manifests([bad], "t")
    assert any("invalid for Kubernetes" in p for p in PROBLEMS[before:]), PROBLEMS[before:]
    check_wiring([bad], "t")
    assert "does not declare" in PROBLEMS[-1], PROBLEMS[-1]
    del PROBLEMS[before:]
    check_published({"gateway": {"ports": ["8080:8080"]}, "grafana": {"ports": ["127.0.0.1:3000:3000"]}}, "t")
    assert len(PROBLEMS) == before, PROBLEMS[before:]
    check_published({"clickhouse": {"ports": ["8123:8123"]}}, "t")
    assert len(PROBLEMS) == before + 1 and "clickhouse" in PROBLEMS[-1]
    del PROBLEMS[before:]
    # A build stage that forgets a workspace member is caught (the first
    # version of the Dockerfile did not copy loadtest).
    text = open(path("deploy", "docker", "Dockerfile")).read()
    assert check_image(text, build=False), PROBLEMS[before:]
    forgetful = "\n".join(l for l in text.splitlines() if not l.startswith("COPY loadtest"))
    assert not check_image(forgetful, build=False)
    assert "cargo metadata" in PROBLEMS[-1], PROBLEMS[-1]
    del PROBLEMS[before:]
    print("lint.py self-test: ok")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=path("target", "debug"))
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        self_test()
        return 0
    self_test()
    sys.stdout.flush()
    for b in ("gateway", "workerd"):
        if not os.access(os.path.join(a.bin_dir, b), os.X_OK):
            print("lint-deploy: %s/%s is not built (run `make build`)" % (a.bin_dir, b), file=sys.stderr)
            return 1
    known = known_metrics()
    check_prometheus(known)
    check_dashboards(known)
    check_helm(a.bin_dir)
    check_compose(a.bin_dir)
    check_image()
    if PROBLEMS:
        print("lint-deploy: %d problem(s):" % len(PROBLEMS), file=sys.stderr)
        for p in PROBLEMS:
            print("  - " + p, file=sys.stderr)
        return 1
    print("lint-deploy: ok (prometheus rules/config, dashboard, helm chart, compose, image build stage)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
