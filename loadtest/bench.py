#!/usr/bin/env python3
"""`make bench`: the gateway measured against baselines taken in the same run.

    python3 loadtest/bench.py                     # the whole run -> docs/benchmarks.md
    python3 loadtest/bench.py --seconds 10 --no-doc --only small,live

Every run measures, on this machine and in this run: the criterion floor (the
gateway's decode, parse, validate, enrich and serialize with no network and no
broker; once before the scenarios and once after, the ratios use the mean and
the page shows both, since the machine's speed drifts within minutes), a
trivial hyper handler under the same small-request load (the price of HTTP
alone here), the gateway's own liveness probe, and then the gateway's
scenarios. The page publishes the ratios first (they carry from one machine
to another), the absolute numbers second, and each run replaces the last.
Every phase also reports the load generator's own CPU: a generator near the
machine's core count was the bottleneck, and its phase says so.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

stack = harness.stack
log = harness.log
SMALL_CONNECTIONS = 64
# The default kafka.linger_ms (config/default.toml, not --config): the waiting
# baseline releases its answers this often.
with open(os.path.join(harness.ROOT, "config", "default.toml"), "rb") as _f:
    LINGER_MS = tomllib.load(_f)["kafka"]["linger_ms"]

# name -> (description, loadtest arguments given the run's seconds)
SCENARIOS = {
    "live": ("GET /health/live, 64 connections, closed loop",
             lambda s, _: ["--get", "/health/live", "--batch", "1", "--concurrency", str(SMALL_CONNECTIONS),
                           "--duration", str(s)]),
    "small": ("one-event POST /ingest, 64 connections, closed loop",
              lambda s, _: ["--batch", "1", "--concurrency", str(SMALL_CONNECTIONS), "--duration", str(s),
                            "--pool", "4096"]),
    "max": ("1000-event batches, 8 clients, closed loop (maximum)",
            lambda s, _: ["--concurrency", "8", "--duration", str(s)]),
    "half": ("1000-event batches at half the maximum, open loop",
             lambda s, r: ["--rate", "%d:%d" % (max(1000, (r.get("max") or 2000) / 2), s)]),
    "posthog": ("PostHog /batch, 1000 events (key in body), 8 clients, closed loop",
                lambda s, _: ["--format", "posthog", "--concurrency", "8", "--duration", str(s)]),
    "realistic": ("realistic batches (1–1000), 50% gzip, 50 tenants, 20k ev/s open loop",
                  lambda s, _: ["--rate", "20000:%d" % s, "--batch", "realistic", "--gzip", "0.5",
                                "--pool", "512"]),
    "burst": ("burst 100k → 1M ev/s for 5 s → 100k (past capacity)",
              lambda s, _: ["--rate", "100000:10,1000000:5,100000:10", "--max-outstanding", "4000"]),
}
ORDER = ["live", "small", "max", "half", "posthog", "realistic", "burst"]


def trivial_baseline(env, seconds, wait_ms=0):
    """The trivial handler under the small-request load: CPU µs per request.
    With `wait_ms`, it holds every answer until a thread releases them all,
    every that many ms (a producer's linger and acknowledgements, no broker)."""
    name = "trivial_wait" if wait_ms else "trivial"
    proc = env.stack.start(name, [harness.LOADTEST, "trivial", "--listen", "127.0.0.1:0",
                                  "--wait-ms", str(wait_ms)])
    log_path = proc.log_path
    stack.wait_until("the trivial handler", lambda: "listening on" in open(log_path).read(), [proc], 30)
    addr = open(log_path).read().split("listening on", 1)[1].split()[0]
    r = harness.loadtest_run(env, ["--batch", "1", "--concurrency", str(SMALL_CONNECTIONS), "--duration",
                                   str(seconds), "--pool", "4096"], name, url="http://" + addr,
                             pid=proc.proc.pid)
    proc.stop()
    env.stack.procs.remove(proc)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--only", default=",".join(ORDER), help="scenarios, comma-separated")
    ap.add_argument("--gateway", default=harness.GATEWAY, help="the gateway binary")
    ap.add_argument("--config", default="", help="extra gateway configuration (TOML) for every scenario")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    ap.add_argument("--json", help="write every result here")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        stack.fail("unknown scenarios %s (known: %s)" % (unknown, ", ".join(ORDER)))
    results = {"machine": harness.machine(), "commit": harness.commit(), "seconds": args.seconds,
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    floors = []
    if not args.no_floor:
        floors.append(harness.floor_us_per_event())
    harness.GATEWAY = args.gateway
    env = harness.Env("memory://tansu/")
    rates = {}
    try:
        env.start_services()
        results["trivial"] = trivial_baseline(env, args.seconds)
        results["trivial_wait"] = trivial_baseline(env, args.seconds, LINGER_MS)
        cfg = env.config(args.config)
        env.migrate_or_topics(cfg)
        env.start_gateway(cfg)
        harness.loadtest_run(env, ["--rate", "20000:3"], "warmup")
        for name in [s for s in ORDER if s in only]:
            r = harness.loadtest_run(env, SCENARIOS[name][1](args.seconds, rates), name)
            results[name] = r
            rates[name] = r["phases"][0]["events_per_sec"]
        results["alive_after"] = env.gateway.alive() and stack.http_ok(env.url + "/health/ready")
    finally:
        env.cleanup()
    if floors:
        # Again after the scenarios: the machine's speed drifts by several
        # percent within minutes, and the ratios use the mean of the two.
        floors.append(harness.floor_us_per_event())
        results["floor_runs"] = floors
        results["floor"] = {k: sum(f[k] for f in floors) / len(floors) for k in floors[0]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    text = render(results)
    print(text)
    if not args.no_doc:
        # The soak and chaos sections stay.
        harness.write_section("Latest run", text)
    return 0 if results.get("alive_after") else 1


def phase(results, name):
    r = results.get(name)
    return r["phases"][0] if r else None


def ratio(a, b):
    return "%.2f×" % (a / b) if a and b else "–"


def render(results):
    live, small, trivial = phase(results, "live"), phase(results, "small"), phase(results, "trivial")
    waiting = phase(results, "trivial_wait")
    floor = (results.get("floor") or {}).get("plain_1000")
    per_req = lambda p: p and p.get("cpu_us_per_request")  # noqa: E731
    per_ev = lambda p: p and p.get("cpu_us_per_event")  # noqa: E731
    rows = [
        ("one-event request ÷ liveness request (gateway CPU)", ratio(per_req(small), per_req(live)), "≤ 2×"),
        ("one-event request ÷ trivial handler request", ratio(per_req(small), per_req(trivial)), ""),
        ("liveness request ÷ trivial handler request", ratio(per_req(live), per_req(trivial)), ""),
        ("one-event request ÷ trivial handler request that waits %d ms" % LINGER_MS,
         ratio(per_req(small), per_req(waiting)), ""),
        ("trivial handler: waiting ÷ answering at once", ratio(per_req(waiting), per_req(trivial)), ""),
        ("1000-event batches at maximum ÷ floor (per event)", ratio(per_ev(phase(results, "max")), floor), "≤ 1.5×"),
        ("1000-event batches at half the maximum ÷ floor", ratio(per_ev(phase(results, "half")), floor), "≤ 1.5×"),
        ("PostHog /batch format at maximum ÷ floor", ratio(per_ev(phase(results, "posthog")), floor), ""),
        ("realistic mix ÷ floor", ratio(per_ev(phase(results, "realistic")), floor), ""),
    ]
    out = ["## Latest run", "",
           "- Date: %s; commit `%s`; `make bench` (%d s per scenario)" % (
               results["date"], results["commit"], results["seconds"]),
           "- Machine: %s" % results["machine"],
           "- Broker: tansu 0.6.0, in-memory storage, same machine; acks=all, idempotent producer",
           "", "### Ratios (what carries to another machine)", "",
           "| ratio | this run | target |", "|---|---:|---|"]
    out += ["| %s | %s | %s |" % r for r in rows]
    out += ["", "### Absolute numbers (this machine, this run)", "",
            "| scenario | target ev/s | accepted ev/s | req/s | latency ms p50 / p99 / max | "
            "CPU µs/request | CPU µs/event | RSS MiB | statuses | load generator cores |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    names = dict((k, v[0]) for k, v in SCENARIOS.items())
    names["trivial"] = "trivial hyper handler (baseline), one-event POST, 64 connections"
    names["trivial_wait"] = ("trivial handler holding each answer until a thread releases all, "
                             "every %d ms (the linger), one-event POST, 64 connections" % LINGER_MS)
    for key in ["trivial", "trivial_wait"] + ORDER:
        r = results.get(key)
        if not r:
            continue
        for i, p in enumerate(r["phases"]):
            label = names[key] + (" — phase %d" % (i + 1) if len(r["phases"]) > 1 else "")
            out.append("| %s |" % label + " | ".join(cells(p)) + " |")
    if floor:
        runs = results.get("floor_runs") or []
        spread = (" (before the scenarios %s, after them %s)"
                  % tuple("%.2f" % r["plain_1000"] for r in runs)) if len(runs) == 2 else ""
        out += ["", "**Floor** (criterion, `cargo bench -p gateway --bench floor`, same run, the mean "
                "of a run before and one after the scenarios): %.2f µs/event plain%s, %.2f µs/event gzip."
                % (floor, spread, results["floor"]["gzip_1000"])]
    out += ["", "After the burst the gateway %s." % (
        "was alive and ready" if results.get("alive_after") else "was NOT ready"), ""]
    return "\n".join(out)


def cells(p):
    lat = p["latency_ms"]
    st = ", ".join("%s: %d" % kv for kv in sorted(p["statuses"].items()))
    f = lambda v, d=2: ("%%.%df" % d) % v if v is not None else "–"  # noqa: E731
    return [" %s" % ("%.0f" % p["target_events_per_sec"] if p.get("target_events_per_sec") else "max"),
            "%.0f" % p["events_per_sec"], "%.0f" % p["requests_per_sec"],
            "%.1f / %.1f / %.1f" % (lat["p50"], lat["p99"], lat["max"]),
            f(p.get("cpu_us_per_request")), f(p.get("cpu_us_per_event")),
            "%.0f" % (p.get("gateway_rss_end_mib") or 0), st, f(p.get("client_cores"))]


if __name__ == "__main__":
    sys.exit(main())
