"""The Helm chart, checked by real tools (helm 3 and kubernetes-validate, both
provisioned by deploy/local/provision.sh) and against the real binaries.

For the default values and every helm/overwatch/ci/*-values.yaml:
  - `helm lint --strict` and `helm template` (at the chart's lowest Kubernetes);
  - every rendered manifest validated strictly against the Kubernetes schemas of
    KUBE_VERSIONS, offline; the ServiceMonitor (a CRD, no schema there) by hand;
  - wiring: Services and the ServiceMonitor select pods/Services that exist and
    name ports those declare; probes name declared ports;
  - the rendered ConfigMap plus each container's rendered environment are
    accepted by the real binary (--check-config), and the gateway's reported
    worst-case memory fits its container's memory limit.
Every helm/overwatch/ci-refused/*-values.yaml must make `helm template` fail
with the text of its `# expect:` line (the chart's refusals are tested).
Before rendering, the template text is checked too: every `.Values.x` exists in
values.yaml and every value is documented in the chart's README.
"""

import glob
import os
import re
import subprocess
import tempfile

import yaml

from lint_common import CACHE, PROBLEMS, clean_env, path, problem, run

CHART = path("helm", "overwatch")
HELM_LAYER_VERSION = "2.0.4"  # deploy/local/provision.sh
# The chart's kubeVersion floor (preStop sleep hooks) and the newest schemas.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
RELEASE = "overwatch"
# What a secretKeyRef stands for when the rendered environment is checked.
SECRET_PLACEHOLDER = "lint-placeholder-secret"


def helm_binary():
    return os.environ.get("OVERWATCH_HELM") or os.path.join(CACHE, "helm-layer-%s" % HELM_LAYER_VERSION, "helm")


# --- template text -----------------------------------------------------------------

ACTION = re.compile(r"\{\{-?.*?-?\}\}", re.S)


def blank_template(text):
    """Template text with action-only lines dropped and inline actions replaced."""
    out = []
    for line in text.splitlines():
        stripped = ACTION.sub("", line).strip()
        if not stripped and "{{" in line:
            continue
        out.append(ACTION.sub("x", line))
    return "\n".join(out) + "\n"


def values_paths(text):
    return set(re.findall(r"\.Values((?:\.[A-Za-z0-9_]+)+)", text))


def lookup(values, dotted):
    cur = values
    for part in dotted.strip(".").split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True


def leaves(values, prefix=""):
    for k, v in values.items():
        p = prefix + k
        if isinstance(v, dict) and v:
            yield from leaves(v, p + ".")
        else:
            yield p


def documented(leaf, readme):
    """A value is documented when it, or a map containing it, is named in README."""
    parts = leaf.split(".")
    return any("`%s`" % ".".join(parts[:i]) in readme for i in range(len(parts), 0, -1))


def check_chart_text(templates, values, readme, where):
    """Returns problems for {name: text} templates against values and README."""
    found = []
    for name, text in sorted(templates.items()):
        for p in sorted(values_paths(text)):
            if not lookup(values, p):
                found.append("%s/%s: uses .Values%s, which values.yaml does not define" % (where, name, p))
        if name.endswith(".yaml"):
            try:
                list(yaml.safe_load_all(blank_template(text)))
            except yaml.YAMLError as e:
                found.append("%s/%s: not YAML once actions are blanked: %s" % (where, name, e))
    for p in leaves(values):
        if not documented(p, readme):
            found.append("%s/README.md: value `%s` is not documented" % (where, p))
    return found


# --- rendered manifests ------------------------------------------------------------

def validate_manifests(docs, where):
    """Strict schema validation of every manifest; returns how many were checked."""
    import kubernetes_validate as kv
    checked = 0
    for d in docs:
        name = "%s %s" % (d.get("kind"), (d.get("metadata") or {}).get("name"))
        if d.get("apiVersion") == "monitoring.coreos.com/v1":
            check_service_monitor(d, where)
            checked += 1
            continue
        for v in KUBE_VERSIONS:
            try:
                kv.validate(d, v, strict=True)
            except kv.ValidationError as e:
                problem(where, "%s is invalid for Kubernetes %s: %s" % (name, v, str(e).splitlines()[0]))
            except kv.SchemaNotFoundError:
                problem(where, "%s: no Kubernetes %s schema for %s" % (name, v, d.get("apiVersion")))
        checked += 1
    return checked


def check_service_monitor(d, where):
    spec = d.get("spec") or {}
    if d.get("kind") != "ServiceMonitor":
        problem(where, "unexpected %s kind %s" % (d.get("apiVersion"), d.get("kind")))
    if not (spec.get("selector") or {}).get("matchLabels"):
        problem(where, "ServiceMonitor has no spec.selector.matchLabels")
    for ep in spec.get("endpoints") or [None]:
        if not isinstance(ep, dict) or not ep.get("port") or not str(ep.get("path", "")).startswith("/"):
            problem(where, "ServiceMonitor endpoint %r needs a port name and a path" % (ep,))
        unknown = set(ep or {}) - {"port", "path", "interval", "scheme", "scrapeTimeout", "honorLabels"}
        if unknown:
            problem(where, "ServiceMonitor endpoint has fields the chart does not expect: %s" % sorted(unknown))


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_specs(docs):
    for d in docs:
        if d.get("kind") == "Deployment":
            t = d["spec"]["template"]
            yield d, t["metadata"].get("labels") or {}, t["spec"]


def check_wiring(docs, where):
    """Selectors find their pods and Services; named ports exist."""
    pods = list(pod_specs(docs))
    services = [d for d in docs if d.get("kind") == "Service"]
    for dep, labels, spec in pods:
        if not selects(dep["spec"]["selector"]["matchLabels"], labels):
            problem(where, "Deployment %s: selector does not match its pod labels" % dep["metadata"]["name"])
        for c in spec["containers"]:
            names = {p.get("name") for p in c.get("ports") or []}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in names:
                    problem(where, "container %s: %s uses port %s, which it does not declare" % (c["name"], probe, port))
    for s in services:
        sel = s["spec"].get("selector") or {}
        targets = [spec for _, labels, spec in pods if selects(sel, labels)]
        if not targets:
            problem(where, "Service %s selects no pod" % s["metadata"]["name"])
        for p in s["spec"].get("ports") or []:
            tp = p.get("targetPort")
            if isinstance(tp, str) and not any(tp in {q.get("name") for c in t["containers"] for q in c.get("ports") or []} for t in targets):
                problem(where, "Service %s: targetPort %s is not a port of the pods it selects" % (s["metadata"]["name"], tp))
    for d in docs:
        if d.get("kind") != "ServiceMonitor":
            continue
        sel = d["spec"]["selector"].get("matchLabels") or {}
        chosen = [s for s in services if selects(sel, s["metadata"].get("labels") or {})]
        if not chosen:
            problem(where, "ServiceMonitor selects no Service")
        ports = {p.get("name") for s in chosen for p in s["spec"].get("ports") or []}
        for ep in d["spec"].get("endpoints") or []:
            if ep.get("port") not in ports:
                problem(where, "ServiceMonitor endpoint port %s is on none of the Services it selects" % ep.get("port"))


def container_env(c, config_file):
    env = {}
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in (e.get("valueFrom") or {}):
            env[e["name"]] = SECRET_PLACEHOLDER
    env["OVERWATCH_CONFIG"] = config_file
    return env


def check_rendered_config(docs, bins, where):
    """The binaries accept exactly what the chart gives them."""
    cms = [d for d in docs if d.get("kind") == "ConfigMap"]
    if len(cms) != 1 or "overwatch.toml" not in (cms[0].get("data") or {}):
        problem(where, "expected one ConfigMap holding overwatch.toml")
        return
    with tempfile.TemporaryDirectory(prefix="ow-chart-") as d:
        cfg = os.path.join(d, "overwatch.toml")
        with open(cfg, "w") as f:
            f.write(cms[0]["data"]["overwatch.toml"])
        for dep, _, spec in pod_specs(docs):
            for c in spec["containers"]:
                env = clean_env(container_env(c, cfg))
                if c["name"] == "gateway":
                    out = run([os.path.join(bins, "gateway"), "--check-config"], where + " (gateway)", env=env)
                    if out is not False:
                        check_memory_limit(out, c.get("resources") or {}, where)
                elif c["name"] == "workerd":
                    run([os.path.join(bins, "workerd"), "check-config"], where + " (workerd)", env=env)
                else:
                    problem(where, "container %s is neither gateway nor workerd" % c["name"])


# Baseline memory beside the gateway's bound: code, the user-agent regexes and
# cache (measured at about 70 MiB RSS by gateway/tests/hostile.rs).
GATEWAY_BASELINE_MIB = 96
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def check_memory_limit(check_output, resources, where):
    """The gateway's memory limit holds the bound the gateway reports."""
    m = re.search(r"memory bound (\d+) bytes", check_output)
    limit = (resources.get("limits") or {}).get("memory", "")
    u = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", str(limit))
    if not m or not u:
        problem(where, "cannot compare the gateway's memory bound with resources.limits.memory %r" % limit)
        return
    need = int(m.group(1)) + GATEWAY_BASELINE_MIB * (1 << 20)
    have = int(u.group(1)) * UNITS[u.group(2)]
    if need > have:
        problem(where, "gateway.resources.limits.memory %s is below the configured worst case "
                "(%d MiB bound + %d MiB baseline): lower gateway.cpuWorkers or the limits, or raise it"
                % (limit, int(m.group(1)) >> 20, GATEWAY_BASELINE_MIB))


# --- the chart ---------------------------------------------------------------------

def helm(args, where):
    return run([helm_binary()] + args, where)


def check_values_file(bins, values_file):
    where = os.path.relpath(values_file, path()) if values_file else "helm/overwatch (default values)"
    extra = ["-f", values_file] if values_file else []
    if helm(["lint", "--strict", CHART] + extra, where) is False:
        return
    out = helm(["template", RELEASE, CHART, "--kube-version", KUBE_VERSIONS[0]] + extra, where)
    if out is False:
        return
    docs = [d for d in yaml.safe_load_all(out) if d]
    before = len(PROBLEMS)
    n = validate_manifests(docs, where)
    check_wiring(docs, where)
    check_rendered_config(docs, bins, where)
    if len(PROBLEMS) == before:
        kinds = sorted({d["kind"] for d in docs})
        print("lint-deploy: helm %s: lint ok, %d manifests valid for Kubernetes %s (%s), binaries accept the config"
              % (where, n, " and ".join(KUBE_VERSIONS), ", ".join(kinds)))


def check_refused(values_file):
    where = os.path.relpath(values_file, path())
    first = open(values_file).readline()
    m = re.match(r"#\s*expect:\s*(.+)", first)
    if not m:
        problem(where, "the first line must be `# expect: <text of the chart's refusal>`")
        return
    r = subprocess.run([helm_binary(), "template", RELEASE, CHART, "-f", values_file],
                       capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        problem(where, "the chart rendered this configuration; it must refuse it (%s)" % m.group(1))
    elif m.group(1).strip() not in r.stderr:
        problem(where, "the chart refused it, but not with `%s`:\n%s" % (m.group(1).strip(), r.stderr))
    else:
        print("lint-deploy: helm %s: refused as expected" % where)


def check_helm(bins):
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml"))) or {}
    tdir = os.path.join(CHART, "templates")
    templates = {n: open(os.path.join(tdir, n)).read() for n in os.listdir(tdir)}
    readme = open(os.path.join(CHART, "README.md")).read()
    PROBLEMS.extend(check_chart_text(templates, values, readme, "helm/overwatch"))
    if not os.access(helm_binary(), os.X_OK):
        problem(CHART, "helm is not provisioned at %s (run `make provision`)" % helm_binary())
        return
    for f in [None] + sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        check_values_file(bins, f)
    refused = sorted(glob.glob(os.path.join(CHART, "ci-refused", "*-values.yaml")))
    if not refused:
        problem(CHART, "no ci-refused/*-values.yaml: the chart's refusals are untested")
    for f in refused:
        check_refused(f)
