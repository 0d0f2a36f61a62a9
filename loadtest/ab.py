#!/usr/bin/env python3
"""Two (or more) gateway builds side by side, in alternating rounds.

    python3 loadtest/ab.py target/release/gateway /tmp/gateway-before --only live,small,max
    python3 loadtest/ab.py target/release/gateway target/release/gateway \\
        --config '' --config '[kafka]\\ncompression = "none"' --only max

Every build runs as its own gateway on one tansu broker (null storage: it
acknowledges and keeps nothing, so the tenth round meets the same broker as
the first), all started before the first round. Each round runs every
scenario against every build, one after the other, in turned order; the
builds that are not under load sit idle. Prints each build's CPU per request
(liveness, one-event) or per event (1000-event batches) per round and their
median, and for each build after the first its per-round ratio to the first
with the median: on a machine whose speed drifts by a third within minutes,
that ratio is what a single pair of runs cannot give.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import harness  # noqa: E402

stack = harness.stack


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gateways", nargs="+", help="gateway binaries (the first is the reference)")
    ap.add_argument("--config", action="append", default=[],
                    help="extra TOML for the gateway of the same position (repeat per build)")
    ap.add_argument("--only", default="live,small,max", help="of live, small, max, half")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--slice", type=int, default=5, help="seconds per scenario and build in a round")
    args = ap.parse_args()
    names = [s for s in args.only.split(",") if s]
    if [s for s in names if s not in ("live", "small", "max", "half")] or args.rounds < 1:
        stack.fail("--only takes live, small, max, half; --rounds at least 1")
    env = harness.Env("null://tansu/", name="ab")
    targets = []
    try:
        env.start_services()
        for i, binary in enumerate(args.gateways):
            env.gw_port, env.ops_port = stack.free_port(), stack.free_port()
            cfg = env.config(args.config[i] if i < len(args.config) else "")
            if i == 0:
                env.migrate_or_topics(cfg)
            proc = env.stack.start("gateway-%d" % i, [binary, "--config", cfg])
            url = env.url
            stack.wait_until("gateway %d" % i, lambda: stack.http_ok(url + "/health/ready"), [proc], 60)
            harness.loadtest_run(env, ["--rate", "20000:3"], "warmup-%d" % i, url=url, pid=proc.proc.pid)
            targets.append((url, proc.proc.pid))
        per = {}
        for r in range(args.rounds):
            order = list(range(len(targets)))
            k = r % len(order)
            for name in names:
                for i in order[k:] + order[:k]:
                    # Half runs at half of this build's median maximum so far.
                    rates = {"max": bench.median(per.get(("max-rate", i), []))}
                    url, pid = targets[i]
                    rep = harness.loadtest_run(env, bench.SCENARIOS[name][1](args.slice, rates),
                                               "%s-%d-%d" % (name, i, r), url=url, pid=pid)
                    p = rep["phases"][0]
                    key = "cpu_us_per_request" if name in ("live", "small") else "cpu_us_per_event"
                    per.setdefault((name, i), []).append(p[key])
                    if name == "max":
                        per.setdefault(("max-rate", i), []).append(p["events_per_sec"])
    finally:
        env.cleanup()
    print("\n%d rounds of %d s; CPU µs per request (live, small) or per event (max, half)" % (
        args.rounds, args.slice))
    for name in names:
        for i, binary in enumerate(args.gateways):
            v = per[(name, i)]
            line = "%-5s %d %-40s median %8.3f  rounds %s" % (
                name, i, binary[-40:], bench.median(v), " ".join("%.2f" % x for x in v))
            if i:
                ratios = [b / a for a, b in zip(per[(name, 0)], v)]
                line += "\n      ÷ build 0 per round: median %.3f  (%s)" % (
                    bench.median(ratios), " ".join("%.3f" % x for x in ratios))
            print(line)
    if "live" in names and "small" in names:
        for i in range(len(targets)):
            ratios = [s / l for l, s in zip(per[("live", i)], per[("small", i)])]
            print("build %d one-event ÷ liveness per round: median %.2f  (%s)" % (
                i, bench.median(ratios), " ".join("%.2f" % x for x in ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
