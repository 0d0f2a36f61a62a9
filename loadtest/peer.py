#!/usr/bin/env python3
"""The gateway beside PostHog's capture service, in one run, on one broker.

    python3 loadtest/peer.py --capture /path/to/capture [--seconds 20] [--no-doc]

You build the peer yourself (this repository carries none of its code and no
recipe for it) and pass its binary. PostHog's capture needs Redis for its
billing limiter: `redis-server` must be on PATH.

One tansu broker (in memory) serves both services, one at a time. Each gets
the same load generator with the same events, in its own format: Overwatch's
`POST /ingest` with the key in `Authorization`, PostHog's `POST /batch` with
the key in the body. Scenarios, each on both services:

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
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--compression", default="lz4")
    ap.add_argument("--capture-defaults", action="store_true",
                    help="run capture at its own defaults (linger 20 ms, no compression) instead of ours")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    if not os.access(args.capture, os.X_OK):
        stack.fail("%s is not an executable" % args.capture)
    env = harness.Env("memory://tansu/", name="peer")
    res = {"overwatch": {}, "capture": {}}
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
        harness.loadtest_run(env, ["--rate", "20000:3"], "warmup")
        for s, _ in SCENARIOS:
            res["overwatch"][s] = run_on(env, env.url, env.gateway.proc.pid, s, "native", args.seconds,
                                         "overwatch-" + s)
        env.gateway.stop()
        env.stack.procs.remove(env.gateway)
        env.gateway = None
        capture, url = start_capture(env, args.capture, *peer_settings(args))
        run_on(env, url, capture.proc.pid, "max", "posthog", 3, "capture-warmup")
        for s, _ in SCENARIOS:
            res["capture"][s] = run_on(env, url, capture.proc.pid, s, "posthog", args.seconds, "capture-" + s)
    finally:
        env.cleanup()
    text = render(res, args)
    print(text)
    if not args.no_doc:
        harness.write_section("Peer", text)
    return 0


def render(res, args):
    ow, pc = res["overwatch"], res["capture"]
    per_req = lambda p: p.get("cpu_us_per_request")  # noqa: E731
    per_ev = lambda p: p.get("cpu_us_per_event")  # noqa: E731
    x = lambda a, b: "%.2f×" % (a / b) if a and b else "–"  # noqa: E731
    out = ["## Peer", "",
           "- Date: %s; commit `%s`; `python3 loadtest/peer.py --capture <binary> --seconds %d%s`" % (
               datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), harness.commit(),
               args.seconds, " --capture-defaults" if args.capture_defaults else ""),
           "- Machine: %s" % harness.machine(),
           "- Peer: PostHog's capture service (the Rust `capture` of PostHog's `hog-rs`), one message per "
           "event, librdkafka defaults; the gateway with linger %d ms and %s, capture with linger %d ms and "
           "%s; one tansu broker in memory, one service at a time, the same load generator and events"
           % ((args.linger_ms, args.compression) + peer_settings(args)),
           "", "| | Overwatch gateway | PostHog capture | capture ÷ gateway |", "|---|---:|---:|---:|"]
    out.append("| CPU µs per liveness request | %.2f | %.2f | %s |" % (
        per_req(ow["live"]), per_req(pc["live"]), x(per_req(pc["live"]), per_req(ow["live"]))))
    out.append("| CPU µs per one-event request | %.2f | %.2f | %s |" % (
        per_req(ow["small"]), per_req(pc["small"]), x(per_req(pc["small"]), per_req(ow["small"]))))
    out.append("| one-event request ÷ own liveness request | %s | %s | |" % (
        x(per_req(ow["small"]), per_req(ow["live"])), x(per_req(pc["small"]), per_req(pc["live"]))))
    out.append("| CPU µs per event, 1000-event batches at maximum | %.2f | %.2f | %s |" % (
        per_ev(ow["max"]), per_ev(pc["max"]), x(per_ev(pc["max"]), per_ev(ow["max"]))))
    out.append("| events/s at maximum | %.0f | %.0f | %s |" % (
        ow["max"]["events_per_sec"], pc["max"]["events_per_sec"],
        x(pc["max"]["events_per_sec"], ow["max"]["events_per_sec"])))
    out.append("| one-event requests/s (64 connections) | %.0f | %.0f | |" % (
        ow["small"]["requests_per_sec"], pc["small"]["requests_per_sec"]))
    out += ["", "| service | scenario | req/s | latency ms p50 / p99 | CPU µs/request | CPU µs/event | "
            "RSS MiB | statuses | load generator cores |", "|---|---|---:|---|---:|---:|---:|---|---:|"]
    for svc, label in (("overwatch", "Overwatch"), ("capture", "PostHog capture")):
        for s, desc in SCENARIOS:
            p = res[svc][s]
            st = ", ".join("%s: %d" % kv for kv in sorted(p["statuses"].items()))
            out.append("| %s | %s | %.0f | %.1f / %.1f | %.2f | %.2f | %.0f | %s | %.2f |" % (
                label, desc, p["requests_per_sec"], p["latency_ms"]["p50"], p["latency_ms"]["p99"],
                per_req(p) or 0, per_ev(p) or 0, p.get("gateway_rss_end_mib") or 0, st,
                p.get("client_cores") or 0))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
