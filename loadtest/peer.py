#!/usr/bin/env python3
"""The gateway beside PostHog's capture service, in one run, on one broker.

    python3 loadtest/peer.py --capture /path/to/capture [--rounds 5] [--seconds 5] [--no-doc]

You build the peer yourself (this repository carries none of its code and no
recipe for it) and pass its binary. PostHog's capture needs Redis for its
billing limiter: `redis-server` must be on PATH.

One tansu broker (in memory) serves both services, which run side by side and
are loaded one at a time. Each gets the same load generator with the same
events, in its own format: Overwatch's `POST /ingest` with the key in
`Authorization`, PostHog's `POST /batch` with the key in the body. The
scenarios run in `--rounds` rounds of `--seconds` each, the two services
alternating within a round (which goes first alternates too), and every ratio
is taken within a round: the report gives each ratio's median over the rounds
and their range, because this machine's speed drifts by a third within minutes.
Scenarios, each on both services:

- liveness requests (`/health/live`, `/_liveness`), 64 connections, closed loop;
- one-event requests, 64 connections, closed loop;
- 1000-event batches, 8 clients, closed loop (the maximum).

Both producers get the same linger (`--linger-ms`, Overwatch's default 5) and
codec (`--compression`, lz4), or capture keeps its own defaults (20 ms, none)
with `--capture-defaults`. The gateway runs its defaults otherwise:
acks=all and the idempotent producer; capture runs librdkafka's defaults
(acks=all, not idempotent) and one message per event. The report gives each
service's CPU per request and per event, and the ratios; it rewrites the
"Peer" section of docs/benchmarks.md unless `--no-doc`.
"""

import argparse
import datetime
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

stack = harness.stack
log = harness.log

CONNECTIONS = 64
SCENARIOS = [
    ("live", "liveness request, 64 connections, closed loop"),
    ("small", "one-event request, 64 connections, closed loop"),
    ("max", "1000-event batches, 8 clients, closed loop"),
]


def loadtest_args(scenario, fmt, seconds):
    if scenario == "live":
        return ["--get", "/health/live" if fmt == "native" else "/_liveness", "--batch", "1",
                "--concurrency", str(CONNECTIONS), "--duration", str(seconds)]
    base = ["--format", fmt, "--duration", str(seconds)]
    if scenario == "small":
        return base + ["--batch", "1", "--concurrency", str(CONNECTIONS), "--pool", "4096"]
    return base + ["--concurrency", "8"]


def run_on(env, url, pid, scenario, fmt, seconds, name):
    """One scenario against one service; every answer must be 200."""
    p = harness.loadtest_run(env, loadtest_args(scenario, fmt, seconds), name, url=url, pid=pid)["phases"][0]
    bad = {k: v for k, v in p["statuses"].items() if k != "200"}
    if bad:
        stack.fail("%s: answers other than 200: %s" % (name, bad))
    return p


def start_capture(env, binary, linger_ms, compression):
    redis_port, port = stack.free_port(), stack.free_port()
    redis = env.stack.start("redis", ["redis-server", "--port", str(redis_port), "--save", "",
                                      "--appendonly", "no"])
    stack.wait_until("redis", lambda: stack.port_busy(redis_port), [redis], 30)
    cenv = dict(os.environ)
    cenv.update({
        "ADDRESS": "127.0.0.1:%d" % port,
        "REDIS_URL": "redis://127.0.0.1:%d/" % redis_port,
        "KAFKA_HOSTS": env.stack.kafka,
        "KAFKA_TOPIC": "events_plugin_ingestion",
        "KAFKA_HISTORICAL_TOPIC": "events_plugin_ingestion_historical",
        "KAFKA_PRODUCER_LINGER_MS": str(linger_ms),
        "KAFKA_COMPRESSION_CODEC": compression,
        "EXPORT_PROMETHEUS": "false",
        "RUST_LOG": "warn",
    })
    url = "http://127.0.0.1:%d" % port
    proc = env.stack.start("capture", [binary], env=cenv)
    stack.wait_until("PostHog capture", lambda: stack.http_ok(url + "/_liveness"), [proc], 60)
    return proc, url


def peer_settings(args):
    """Capture's linger and codec: the gateway's, or capture's own defaults."""
    return (20, "none") if args.capture_defaults else (args.linger_ms, args.compression)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", required=True, help="PostHog's capture binary (built by you)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5, help="seconds per scenario and service in a round")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--compression", default="lz4")
    ap.add_argument("--capture-defaults", action="store_true",
                    help="run capture at its own defaults (linger 20 ms, no compression) instead of ours")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    if not os.access(args.capture, os.X_OK):
        stack.fail("%s is not an executable" % args.capture)
    if args.rounds < 1 or args.seconds < 1:
        stack.fail("--rounds and --seconds must be at least 1")
    env = harness.Env("memory://tansu/", name="peer")
    res = {"overwatch": {s: [] for s, _ in SCENARIOS}, "capture": {s: [] for s, _ in SCENARIOS}}
    try:
        env.start_services()
        cfg = env.config()
        env.migrate_or_topics(cfg)
        # PostHog's topics, with the same partitions as ours.
        harness.sh([harness.LOADTEST, "topics", "--brokers", env.stack.kafka, "--partitions", "3",
                    "--names", "events_plugin_ingestion,events_plugin_ingestion_historical"])
        os.environ["OVERWATCH__KAFKA__LINGER_MS"] = str(args.linger_ms)
        os.environ["OVERWATCH__KAFKA__COMPRESSION"] = args.compression
        env.start_gateway(cfg)
        capture, url = start_capture(env, args.capture, *peer_settings(args))
        harness.loadtest_run(env, ["--rate", "20000:3"], "warmup")
        run_on(env, url, capture.proc.pid, "max", "posthog", 3, "capture-warmup")
        services = [("overwatch", env.url, env.gateway.proc.pid, "native"),
                    ("capture", url, capture.proc.pid, "posthog")]
        for r in range(args.rounds):
            for s, _ in SCENARIOS:
                for svc, u, pid, fmt in (services if r % 2 == 0 else services[::-1]):
                    res[svc][s].append(run_on(env, u, pid, s, fmt, args.seconds, "%s-%s-%d" % (svc, s, r)))
    finally:
        env.cleanup()
    text = render(res, args)
    print(text)
    if not args.no_doc:
        harness.write_section("Peer", text)
    return 0


def per_req(p):
    return p.get("cpu_us_per_request")


def per_ev(p):
    return p.get("cpu_us_per_event")


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def spread(values):
    """The median of per-round values and their range, as text."""
    values = [v for v in values if v]
    if not values:
        return "–"
    if len(values) == 1:
        return "%.2f×" % values[0]
    return "%.2f× (%.2f–%.2f)" % (median(values), min(values), max(values))


def median_round(phases, cost):
    """The round whose cost is the median (its numbers are shown whole)."""
    ranked = sorted(phases, key=lambda p: cost(p) or 0)
    return ranked[(len(ranked) - 1) // 2]


def render(res, args):
    ow, pc = res["overwatch"], res["capture"]
    rounds = range(len(ow["live"]))
    ratio = lambda a, b: a / b if a and b else None  # noqa: E731
    cost = {"live": per_req, "small": per_req, "max": per_ev}
    med = {svc: {s: median_round(res[svc][s], cost[s]) for s, _ in SCENARIOS} for svc in res}
    out = ["## Peer", "",
           "- Date: %s; commit `%s`; `python3 loadtest/peer.py --capture <binary> --rounds %d --seconds %d%s`" % (
               datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), harness.commit(),
               args.rounds, args.seconds, " --capture-defaults" if args.capture_defaults else ""),
           "- Machine: %s" % harness.machine(),
           "- Peer: PostHog's capture service (the Rust `capture` of PostHog's `hog-rs`), one message per "
           "event, librdkafka defaults; the gateway with linger %d ms and %s, capture with linger %d ms and "
           "%s; one tansu broker in memory, both services running, loaded one at a time, alternating within "
           "each of %d rounds of %d s per scenario; the same load generator and events"
           % ((args.linger_ms, args.compression) + peer_settings(args) + (args.rounds, args.seconds)),
           "", "Each ratio is taken within a round; the median of the rounds is shown, with their range. "
           "The CPU figures are those of each service's median round.",
           "", "| | Overwatch gateway | PostHog capture | capture ÷ gateway |", "|---|---:|---:|---:|"]
    out.append("| CPU µs per liveness request | %.2f | %.2f | %s |" % (
        per_req(med["overwatch"]["live"]), per_req(med["capture"]["live"]),
        spread([ratio(per_req(pc["live"][r]), per_req(ow["live"][r])) for r in rounds])))
    out.append("| CPU µs per one-event request | %.2f | %.2f | %s |" % (
        per_req(med["overwatch"]["small"]), per_req(med["capture"]["small"]),
        spread([ratio(per_req(pc["small"][r]), per_req(ow["small"][r])) for r in rounds])))
    out.append("| one-event request ÷ own liveness request | %s | %s | |" % (
        spread([ratio(per_req(ow["small"][r]), per_req(ow["live"][r])) for r in rounds]),
        spread([ratio(per_req(pc["small"][r]), per_req(pc["live"][r])) for r in rounds])))
    out.append("| CPU µs per event, 1000-event batches at maximum | %.2f | %.2f | %s |" % (
        per_ev(med["overwatch"]["max"]), per_ev(med["capture"]["max"]),
        spread([ratio(per_ev(pc["max"][r]), per_ev(ow["max"][r])) for r in rounds])))
    out.append("| events/s at maximum | %.0f | %.0f | %s |" % (
        med["overwatch"]["max"]["events_per_sec"], med["capture"]["max"]["events_per_sec"],
        spread([ratio(pc["max"][r]["events_per_sec"], ow["max"][r]["events_per_sec"]) for r in rounds])))
    out.append("| one-event requests/s (64 connections) | %.0f | %.0f | |" % (
        med["overwatch"]["small"]["requests_per_sec"], med["capture"]["small"]["requests_per_sec"]))
    out += ["", "Each service's median round:", "",
            "| service | scenario | req/s | latency ms p50 / p99 | CPU µs/request | CPU µs/event | "
            "RSS MiB | statuses | load generator cores |", "|---|---|---:|---|---:|---:|---:|---|---:|"]
    for svc, label in (("overwatch", "Overwatch"), ("capture", "PostHog capture")):
        for s, desc in SCENARIOS:
            p = med[svc][s]
            st = ", ".join("%s: %d" % kv for kv in sorted(p["statuses"].items()))
            out.append("| %s | %s | %.0f | %.1f / %.1f | %.2f | %.2f | %.0f | %s | %.2f |" % (
                label, desc, p["requests_per_sec"], p["latency_ms"]["p50"], p["latency_ms"]["p99"],
                per_req(p) or 0, per_ev(p) or 0, p.get("gateway_rss_end_mib") or 0, st,
                p.get("client_cores") or 0))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
