#!/usr/bin/env python3
"""`make bench`: the gateway measured against baselines taken in the same run.

    python3 loadtest/bench.py                     # the whole run -> docs/benchmarks.md
    python3 loadtest/bench.py --rounds 3 --slice 4 --no-doc --only trivial,live,small

Every run measures, on this machine and in this run: the criterion floor (the
gateway's decode, parse, validate, enrich and serialize with no network and no
broker), a trivial hyper handler under the same small-request load (the price
of HTTP alone here, answering at once and holding its answers for the
linger), the gateway's own liveness probe, and then the gateway's scenarios.

The machine's speed drifts by a third within minutes, so every ratio is taken
within a round: `--rounds` rounds of `--slice` seconds each run the trivial
handlers, liveness and one-event requests one after the other, then the
floor, the maximum, half of it and the floor again (the round's floor is the
mean of the two around its load); the page shows each ratio's median over
the rounds with its range. The other scenarios run once, `--seconds` each,
against the median floor. The page publishes the ratios first (they carry
from one machine to another), the absolute numbers second, and each run
replaces the last. Every phase also reports the load generator's own CPU: a
generator near the machine's core count was the bottleneck, and its phase
says so.
"""

import argparse
import datetime
import json
import os
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


# Measured in alternating rounds, every baseline beside the scenarios it is the
# baseline of: the machine's speed drifts by a third within minutes here, so
# two scenarios run minutes apart can differ by more than the change under
# test. Each round gives one ratio; the page shows the median and the range.
REQUEST_ROUNDS = ["trivial", "trivial_wait", "live", "small"]
EVENT_ROUNDS = ["max", "half"]


def start_trivial(env, wait_ms=0):
    """The trivial handler (`loadtest trivial`) on a port of its own: the price
    of HTTP alone here. With `wait_ms`, it holds every answer until a thread
    releases them all, every that many ms (a producer's linger and
    acknowledgements, no broker). Returns (url, pid)."""
    name = "trivial_wait" if wait_ms else "trivial"
    proc = env.stack.start(name, [harness.LOADTEST, "trivial", "--listen", "127.0.0.1:0",
                                  "--wait-ms", str(wait_ms)])
    log_path = proc.log_path
    stack.wait_until("the trivial handler", lambda: "listening on" in open(log_path).read(), [proc], 30)
    addr = open(log_path).read().split("listening on", 1)[1].split()[0]
    return "http://" + addr, proc.proc.pid


def request_rounds(env, rounds, seconds, only, results):
    """`rounds` rounds of one slice of each request-level scenario, in turned
    order (the first of a round goes last in the next)."""
    targets = {}
    if "trivial" in only:
        targets["trivial"] = start_trivial(env)
        targets["trivial_wait"] = start_trivial(env, LINGER_MS)
    names = [n for n in REQUEST_ROUNDS if n in targets or n in only]
    for r in range(rounds if names else 0):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            url, pid = targets.get(name, (None, None))
            # The trivial handlers take the one-event load.
            args = SCENARIOS[name if name in SCENARIOS else "small"][1](seconds, {})
            rep = harness.loadtest_run(env, args, "%s-%d" % (name, r), url=url, pid=pid)
            results.setdefault(name, []).append(rep)


def event_rounds(env, rounds, seconds, only, floor, results, floors):
    """`rounds` rounds of the floor (criterion, plain and gzip 1000-event
    bodies), the maximum and half the maximum (this round's), and the floor
    again: the round's floor is the mean of the two around its load, so a
    machine whose speed moves during the round moves both sides alike."""
    measure = lambda: harness.floor_us_per_event(warm_up=1, measure=max(2, seconds // 2))
    for r in range(rounds):
        before = measure() if floor else None
        rates = {}
        for name in [n for n in EVENT_ROUNDS if n in only]:
            rep = harness.loadtest_run(env, SCENARIOS[name][1](seconds, rates), "%s-%d" % (name, r))
            results.setdefault(name, []).append(rep)
            rates[name] = rep["phases"][0]["events_per_sec"]
        if floor:
            after = measure()
            floors.append(dict({k: (before[k] + after[k]) / 2 for k in before},
                               before=before["plain_1000"], after=after["plain_1000"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=20, help="length of each scenario run once")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the alternating scenarios")
    ap.add_argument("--slice", type=int, default=5, help="seconds of each scenario in a round")
    ap.add_argument("--only", default=",".join(["trivial"] + ORDER), help="scenarios, comma-separated")
    ap.add_argument("--gateway", default=harness.GATEWAY, help="the gateway binary")
    ap.add_argument("--config", default="", help="extra gateway configuration (TOML) for every scenario")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    ap.add_argument("--json", help="write every result here")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in SCENARIOS and s != "trivial"]
    if unknown:
        stack.fail("unknown scenarios %s (known: trivial, %s)" % (unknown, ", ".join(ORDER)))
    if args.rounds < 1 or args.slice < 1:
        stack.fail("--rounds and --slice must be at least 1")
    results = {"machine": harness.machine(), "commit": harness.commit(), "overrides": harness.overrides(),
               "seconds": args.seconds, "rounds": args.rounds, "slice": args.slice,
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    floors = []
    harness.GATEWAY = args.gateway
    env = harness.Env("memory://tansu/")
    try:
        env.start_services()
        cfg = env.config(args.config)
        env.migrate_or_topics(cfg)
        env.start_gateway(cfg)
        harness.loadtest_run(env, ["--rate", "20000:3"], "warmup")
        request_rounds(env, args.rounds, args.slice, only, results)
        event_rounds(env, args.rounds, args.slice, only, not args.no_floor, results, floors)
        rates = {"max": median([p["events_per_sec"] for p in firsts(results.get("max"))])}
        for name in [s for s in ORDER if s in only and s not in REQUEST_ROUNDS + EVENT_ROUNDS]:
            results[name] = [harness.loadtest_run(env, SCENARIOS[name][1](args.seconds, rates), name)]
        results["alive_after"] = env.gateway.alive() and stack.http_ok(env.url + "/health/ready")
    finally:
        env.cleanup()
    if floors:
        results["floor_runs"] = floors
        results["floor"] = {k: median([f[k] for f in floors]) for k in floors[0]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    text = render(results)
    print(text)
    if not args.no_doc:
        # The soak and chaos sections stay.
        harness.write_section("Latest run", text)
    return 0 if results.get("alive_after") else 1


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def firsts(reports):
    """The first phase of each round's report."""
    return [r["phases"][0] for r in reports or []]


def ratio_cell(values):
    """The median of per-round ratios, with their range when there are several."""
    values = [v for v in values if v]
    if not values:
        return "–"
    m = median(values)
    if len(values) == 1:
        return "%.2f×" % m
    return "%.2f× (%.2f–%.2f)" % (m, min(values), max(values))


def per_round(results, a, b, key):
    """a ÷ b for each round in which both ran (`key` of their first phase)."""
    return [pa.get(key) / pb[key] for pa, pb in zip(firsts(results.get(a)), firsts(results.get(b)))
            if pa.get(key) and pb.get(key)]


def over_floor(results, name, floors):
    """A scenario's CPU per event ÷ the floor: per round where the floor ran in
    each round, else against the median floor."""
    phases = firsts(results.get(name))
    if floors and len(floors) == len(phases):
        return [p["cpu_us_per_event"] / f["plain_1000"] for p, f in zip(phases, floors) if p.get("cpu_us_per_event")]
    floor = (results.get("floor") or {}).get("plain_1000")
    return [p["cpu_us_per_event"] / floor for p in phases if floor and p.get("cpu_us_per_event")]


def median_report(reports, key):
    """The round whose first phase has the median `key` (the lower of two middles)."""
    ranked = sorted((r for r in reports if r["phases"][0].get(key) is not None),
                    key=lambda r: r["phases"][0][key])
    return ranked[(len(ranked) - 1) // 2] if ranked else reports[0]


def render(results):
    floors = results.get("floor_runs") or []
    req = "cpu_us_per_request"
    rows = [
        ("one-event request ÷ liveness request (gateway CPU)", per_round(results, "small", "live", req), "≤ 2×"),
        ("one-event request ÷ trivial handler request", per_round(results, "small", "trivial", req), ""),
        ("liveness request ÷ trivial handler request", per_round(results, "live", "trivial", req), ""),
        ("one-event request ÷ trivial handler request that waits %d ms" % LINGER_MS,
         per_round(results, "small", "trivial_wait", req), ""),
        ("trivial handler: waiting ÷ answering at once", per_round(results, "trivial_wait", "trivial", req), ""),
        ("1000-event batches at maximum ÷ floor (per event)", over_floor(results, "max", floors), "≤ 1.5×"),
        ("1000-event batches at half the maximum ÷ floor", over_floor(results, "half", floors), "≤ 1.5×"),
        ("PostHog /batch format at maximum ÷ floor", over_floor(results, "posthog", []), ""),
        ("realistic mix ÷ floor", over_floor(results, "realistic", []), ""),
    ]
    rounds = results.get("rounds", 1)
    out = ["## Latest run", "",
           "- Date: %s; commit `%s`; `make bench`: %d alternating rounds of %d s per scenario "
           "(the baselines, liveness and one-event requests; the floor, the maximum, half of it and the floor again), "
           "then %d s per other scenario" % (
               results["date"], results["commit"], rounds, results.get("slice", 0), results["seconds"]),
           "- Machine: %s" % results["machine"],
           "- Broker: tansu 0.6.0, in-memory storage, same machine; acks=all, idempotent producer",
           ] + (["- Gateway settings from the environment: " + ", ".join(results["overrides"])]
                if results.get("overrides") else []) + [
           "", "### Ratios (what carries to another machine)", "",
           "Each ratio is taken within a round (its scenarios ran minutes apart at most) and the "
           "median of the rounds is shown, with their range in brackets.", "",
           "| ratio | this run | target |", "|---|---:|---|"]
    out += ["| %s | %s | %s |" % (name, ratio_cell(v), target) for name, v, target in rows]
    out += ["", "### Absolute numbers (this machine, this run)", "",
            "For a scenario run in rounds, the round with the median CPU per request (or per event).", "",
            "| scenario | target ev/s | accepted ev/s | req/s | latency ms p50 / p99 / max | "
            "CPU µs/request | CPU µs/event | RSS MiB | statuses | load generator cores |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    names = dict((k, v[0]) for k, v in SCENARIOS.items())
    names["trivial"] = "trivial hyper handler (baseline), one-event POST, 64 connections"
    names["trivial_wait"] = ("trivial handler holding each answer until a thread releases all, "
                             "every %d ms (the linger), one-event POST, 64 connections" % LINGER_MS)
    for key in ["trivial", "trivial_wait"] + ORDER:
        reports = results.get(key)
        if not reports:
            continue
        r = median_report(reports, req if key in REQUEST_ROUNDS else "cpu_us_per_event")
        for i, p in enumerate(r["phases"]):
            label = names[key] + (" — phase %d" % (i + 1) if len(r["phases"]) > 1 else "")
            out.append("| %s |" % label + " | ".join(cells(p)) + " |")
    floor = results.get("floor")
    if floor:
        plain = [f["plain_1000"] for f in floors]
        single = [f[k] for f in floors for k in ("before", "after") if k in f]
        out += ["", "**Floor** (criterion, `cargo bench -p gateway --bench floor`, in each round before "
                "the maximum and after half of it; a round's floor is the mean of the two): median "
                "%.2f µs/event plain (rounds %.2f–%.2f; single measurements %.2f–%.2f), %.2f µs/event gzip."
                % (floor["plain_1000"], min(plain), max(plain), min(single or plain), max(single or plain),
                   floor["gzip_1000"])]
    out += ["", "After the last scenario%s the gateway %s." % (
        " (the burst)" if results.get("burst") else "",
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
