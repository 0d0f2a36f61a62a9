#!/usr/bin/env python3
"""Where the gateway's CPU goes, per request and per event (`make profile`).

Runs the release gateway under `valgrind --tool=callgrind` beside a tansu
broker (in-memory storage) and, for each scenario, zeroes the counters, sends
a fixed load with `loadtest run`, and dumps them. Each dump's self cost (the
instructions executed in each function, not counting its callees) is summed
into stages by symbol, so the stages add up to the whole process:

    python3 loadtest/profile.py                 # table on stdout
    python3 loadtest/profile.py --out FILE.md   # and as Markdown

Callgrind counts user-space instructions: the kernel's share (syscalls,
wakeups) is not in these numbers, the CPU seconds of `make bench` include it.
The counts repeat for the same binary and load whatever else the machine
does, which is why they are the before/after measure of docs/benchmarks.md.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

stack = harness.stack

# (stage, pattern over the source file, else the function and object), first
# match wins. The profiling build has line tables, so inlined code counts for
# the file (crate) it came from, not for the function it was inlined into.
STAGES = [
    ("allocation", r"/malloc/|malloc\.c|\b(malloc|free|realloc|calloc|_int_malloc|_int_free)\b|"
                   r"/alloc/src/(alloc|raw_vec)"),
    ("memory copies", r"memcpy|memmove|memset|memcmp|strlen|memchr|/string/"),
    ("produce and delivery (librdkafka)", r"librdkafka|rdkafka|\brd_|lz4|LZ4"),
    ("metrics", r"/metrics-|/metrics_|quanta|gateway/src/telemetry"),
    ("tracing", r"/tracing|opentelemetry"),
    ("HTTP (hyper, headers, router)", r"/hyper-|/httparse|/http-[0-9]|/http-body|/want-|gateway/src/router|"
                                      r"gateway/src/server|gateway/src/cors|shared/src/runtime/ops"),
    ("runtime and wakeups (tokio, locks)", r"/tokio-|/mio-|/futex|nptl|pthread|/std/src/sync|/std/src/sys/sync|"
                                           r"/parking_lot|/crossbeam|/lock_api|epoll|syscall|/futures-|"
                                           r"/std/src/thread|/core/src/sync|/std/src/sys/pal/unix/futex"),
    ("kernel entry (syscall wrappers)", r"sysdeps/unix/sysv/linux|/socket|/io/"),
    ("decode (gzip, body read)", r"/flate2|/miniz|zlib|/adler|gateway/src/ingest/decode|/crc32fast"),
    ("parse (simd-json)", r"/simd-json|/simdutf8|/halfbrown|/value-trait|/serde-1|/serde_core|"
                          r"gateway/src/ingest/model|gateway/src/ingest/shape|gateway/src/compat"),
    ("validate and enrich", r"/garde|gateway/src/ingest/validate|/uaparser|/maxminddb|shared/src/enrich|"
                            r"/regex|gateway/src/enrich|/aho-corasick|/time-0"),
    ("serialize", r"/serde_json|/itoa|/ryu|shared/src/event"),
    ("auth and rate limit", r"gateway/src/auth|gateway/src/ratelimit|/sha2|/ed25519|/curve25519|/subtle"),
    ("gateway request flow", r"gateway/src/ingest/mod|gateway/src/sink|gateway/src/app"),
    ("ids (uuid, random)", r"/uuid|/getrandom|/rand"),
    ("Rust std (formatting, strings, collections)", r"/core/src|/alloc/src|/std/src|/hashbrown"),
]
OTHER = "other"
RX = [(name, re.compile(p)) for name, p in STAGES]


def stage_of(where):
    for name, rx in RX:
        if rx.search(where):
            return name
    return OTHER


def annotate(path):
    """{stage: instructions} and {source file or function: instructions} of one
    callgrind dump, from its self costs (a call's inclusive cost line, the one
    after `calls=`, is skipped). Names may be compressed as `(id) name`."""
    names = {}

    def name(kind, value):
        m = re.match(r"\((\d+)\)(?:\s+(.*))?$", value)
        if not m:
            return value
        key = (kind, m.group(1))
        if m.group(2) is not None:
            names[key] = m.group(2)
        return names.get(key, value)

    by_place = collections.Counter()
    ob = fl = fi = fn = ""
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) < 2:
                    continue
                try:
                    ir = int(parts[1])
                except ValueError:
                    continue
                src = fi or fl
                where = src if src and src != "???" else "%s [%s]" % (fn, ob)
                by_place[where] += ir
                continue
            key, _, value = line.partition("=")
            if key == "ob":
                ob = name("ob", value)
            elif key == "fl":
                fl = name("fl", value)
                fi = ""
            elif key in ("fi", "fe"):
                fi = name("fl", value)
                if fi == fl:
                    fi = ""
            elif key == "fn":
                fn = name("fn", value)
                fi = ""
            elif key in ("cob", "cfi", "cfl", "cfn"):
                name({"cob": "ob", "cfi": "fl", "cfl": "fl", "cfn": "fn"}[key], value)
            elif key == "calls":
                skip_next = True
    by_stage = collections.Counter()
    for where, ir in by_place.items():
        by_stage[stage_of(where)] += ir
    return by_stage, by_place.most_common(25)


SCENARIOS = [
    # (name, loadtest arguments, unit: "request" or "event")
    ("liveness GET /health/live", ["--get", "/health/live", "--batch", "1", "--rate", "200:10",
                                   "--pool", "64"], "request"),
    ("one-event POST /ingest", ["--batch", "1", "--rate", "150:10", "--pool", "256"], "request"),
    ("1000-event POST /ingest", ["--batch", "1000", "--rate", "1000:10", "--pool", "16"], "event"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="also write the tables as Markdown here")
    ap.add_argument("--label", default="", help="a name for this build in the Markdown heading")
    ap.add_argument("--gateway", default=os.path.join(harness.ROOT, "target", "profiling", "gateway"),
                    help="the gateway binary to profile (default: `cargo build --profile profiling`'s)")
    ap.add_argument("--config", default="", help="extra gateway configuration (TOML)")
    ap.add_argument("--keep", help="copy the callgrind dumps into this directory")
    ap.add_argument("--from", dest="source", help="only render the dumps an earlier --keep kept here")
    args = ap.parse_args()
    if args.source:
        with open(os.path.join(args.source, "meta.json")) as f:
            meta = json.load(f)
        rows = []
        for n, (name, unit, per) in enumerate(meta):
            by_stage, top = annotate(os.path.join(args.source, "callgrind.%d.out" % n))
            rows.append((name, unit, per, by_stage, top))
        text = render(rows, args.label)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        return
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        stack.fail("valgrind (with callgrind_annotate) is required: apt-get install valgrind")
    env = harness.Env("memory://tansu/", name="profile")
    rows = []
    try:
        env.start_services()
        cfg = env.config(args.config)
        env.migrate_or_topics(cfg)
        outdir = os.path.join(env.dir, "callgrind")
        os.makedirs(outdir)
        env.gateway = env.stack.start("gateway", [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=%s/cg.out" % outdir,
            "--dump-instr=no", args.gateway, "--config", cfg])
        stack.wait_until("the gateway under callgrind", lambda: stack.http_ok(env.url + "/health/ready"),
                         [env.gateway], 180)
        pid = str(env.gateway.proc.pid)
        harness.loadtest_run(env, ["--batch", "10", "--rate", "2000:5", "--pool", "64"], "warmup")
        for n, (name, argv, unit) in enumerate(SCENARIOS):
            subprocess.run(["callgrind_control", "--zero", pid], check=True, stdout=subprocess.DEVNULL)
            r = harness.loadtest_run(env, argv, "profile-%d" % n)
            subprocess.run(["callgrind_control", "--dump=%s" % name.replace(" ", "_"), pid], check=True,
                           stdout=subprocess.DEVNULL)
            time.sleep(1)
            p = r["phases"][0]
            bad = {k: v for k, v in p["statuses"].items() if k not in ("200",)}
            if bad:
                raise RuntimeError("%s: answers other than 200 under callgrind: %s" % (name, bad))
            dumps = sorted(f for f in os.listdir(outdir) if f.startswith("cg.out."))
            by_stage, top = annotate(os.path.join(outdir, dumps[-1]))
            per = p["requests"] if unit == "request" else p["events_accepted"]
            rows.append((name, unit, per, by_stage, top))
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                with open(os.path.join(args.keep, "meta.json"), "w") as f:
                    json.dump([r[:3] for r in rows], f)
            done = os.path.join(outdir, "done-%d" % n)
            os.rename(os.path.join(outdir, dumps[-1]), done)
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                shutil.copy(done, os.path.join(args.keep, "callgrind.%d.out" % n))
    finally:
        env.cleanup()
    text = render(rows, args.label)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


def render(rows, label):
    stages = [s for s, _ in STAGES] + [OTHER]
    head = "| stage | " + " | ".join("%s (Ir/%s)" % (name, unit) for name, unit, *_ in rows) + " |"
    lines = ["### Instructions by stage%s (callgrind, self cost)" % (" — " + label if label else ""), "",
             head, "|---|" + "---:|" * len(rows)]
    for s in stages:
        cells = []
        for _, _, per, by_stage, _ in rows:
            total = sum(by_stage.values()) or 1
            v = by_stage.get(s, 0)
            cells.append("%s (%.0f%%)" % (fmt(v / max(per, 1)), 100.0 * v / total))
        lines.append("| %s | %s |" % (s, " | ".join(cells)))
    lines.append("| **total** | %s |" % " | ".join(
        "**%s**" % fmt(sum(b.values()) / max(per, 1)) for _, _, per, b, _ in rows))
    lines.append("")
    for name, unit, per, _, top in rows:
        lines.append("Top functions, %s (%d %ss):" % (name, per, unit))
        lines.append("")
        for sym, ir in top[:12]:
            lines.append("- %s Ir/%s `%s`" % (fmt(ir / max(per, 1)), unit, short(sym)))
        lines.append("")
    return "\n".join(lines)


def short(place):
    """A source path without the machine's prefixes (registry, toolchain, checkout)."""
    place = re.sub(r"^.*/registry/src/[^/]+/", "", place)
    place = re.sub(r"^.*/rustlib/src/rust/library/", "std:", place)
    place = re.sub(r"^/rustc/[0-9a-f]+/library/", "std:", place)
    return place.replace(harness.ROOT + "/", "")[:140]


def fmt(x):
    return "{:,.0f}".format(x)


if __name__ == "__main__":
    main()
