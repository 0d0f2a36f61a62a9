#!/usr/bin/env python3
"""Drives the benchmark and soak runs against real local processes.

    (make bench is loadtest/bench.py, make profile loadtest/profile.py; both use this module)
    python3 loadtest/harness.py soak    # make soak: 10 minutes at 20k events/s, RSS drift
    python3 loadtest/harness.py soak --seconds 3600 --rate 0   # an hour at half the maximum

Needs the release binaries (`cargo build --release -p gateway -p workerd -p loadtest`,
done by the make targets) and the provisioned engines (`make provision`).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("stack", os.path.join(ROOT, "deploy", "local", "stack.py"))
stack = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stack)

REL = os.path.join(ROOT, "target", "release")
GATEWAY = os.path.join(REL, "gateway")
WORKERD = os.path.join(REL, "workerd")
LOADTEST = os.path.join(REL, "loadtest")
TENANTS = 50


def log(msg):
    print("harness: " + msg, flush=True)


def sh(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


class Env:
    """A data directory with a broker (and optionally ClickHouse) and a gateway."""

    def __init__(self, broker_storage, clickhouse=False, name="bench"):
        for b in (GATEWAY, LOADTEST) + ((WORKERD,) if clickhouse else ()):
            if not os.access(b, os.X_OK):
                stack.fail("%s is not built; run `cargo build --release -p gateway -p workerd -p loadtest`" % b)
        stack.check_prereqs()
        self.dir = tempfile.mkdtemp(prefix="overwatch-%s-" % name)
        self.stack = stack.Stack(self.dir, stack.free_port(), stack.free_port(), echo=False,
                                 broker_storage=broker_storage)
        self.with_clickhouse = clickhouse
        self.gateway = None
        self.gw_port = stack.free_port()
        self.ops_port = stack.free_port()
        self.workerd = None

    def start_services(self):
        if self.with_clickhouse:
            self.stack.start_services()
        else:
            broker_dir = os.path.join(self.dir, "broker")
            os.makedirs(broker_dir, exist_ok=True)
            url = "tcp://%s" % self.stack.kafka
            self.broker = self.stack.start("broker", [
                stack.TANSU_BIN, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.stack.broker_storage], cwd=broker_dir)
            stack.wait_until("the broker", lambda: stack.port_busy(self.stack.kafka_port), [self.broker], 60)

    @property
    def broker_proc(self):
        return next(p for p in self.stack.procs if p.name == "broker")

    def config(self, extra=""):
        keys = subprocess.run([LOADTEST, "keys", "--tenants", str(TENANTS)], check=True,
                              capture_output=True, text=True).stdout
        tiers = "".join("[tiers.%s]\nevents_per_second = 100000000.0\nburst = 100000000\n"
                        "monthly_event_quota = 0\n\n" % t for t in ("free", "paid", "enterprise"))
        text = (
            "[gateway]\nlisten = \"127.0.0.1:%d\"\noperations_listen = \"127.0.0.1:%d\"\n"
            "trusted_proxies = [\"127.0.0.1/32\"]\n\n"
            "[kafka]\nbrokers = \"%s\"\npartitions = 3\n\n"
            "[clickhouse]\nurl = \"%s\"\nkafka_brokers = \"%s\"\nkafka_group = \"overwatch-%s\"\n\n"
            "[telemetry]\nsnapshot_interval_secs = 0\n\n"
            "[log]\nlevel = \"warn\"\n\n%s%s%s"
            % (self.gw_port, self.ops_port, self.stack.kafka,
               self.stack.clickhouse if self.with_clickhouse else "http://127.0.0.1:9",
               self.stack.kafka, os.path.basename(self.dir), tiers, keys, extra))
        path = os.path.join(self.dir, "overwatch.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def migrate_or_topics(self, cfg):
        if self.with_clickhouse:
            sh([WORKERD, "--config", cfg, "migrate"], stdout=subprocess.DEVNULL)
        else:
            sh([LOADTEST, "topics", "--brokers", self.stack.kafka, "--partitions", "3"])

    def start_gateway(self, cfg):
        self.gateway = self.stack.start("gateway", [GATEWAY, "--config", cfg])
        stack.wait_until("the gateway", lambda: stack.http_ok(self.url + "/health/ready"), [self.gateway], 60)
        return self.gateway

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.gw_port

    def stop(self):
        self.stack.stop()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def loadtest_run(env, args, name, url=None, pid=None):
    """`loadtest run` against `url` (the gateway's by default), measuring the
    process `pid` (the gateway's, when it runs); returns the report."""
    out = os.path.join(env.dir, name + ".json")
    argv = [LOADTEST, "run", "--url", url or env.url, "--tenants", str(TENANTS), "--json", out] + args
    if pid is None and env.gateway:
        pid = env.gateway.proc.pid
    if pid is not None:
        argv += ["--pid", str(pid)]
    log("%s: %s" % (name, " ".join(argv[2:])))
    sh(argv)
    with open(out) as f:
        return json.load(f)


def floor_us_per_event(warm_up, measure):
    """Runs the criterion floor benchmark (its 1000-event bodies: `warm_up` and
    `measure` seconds each); returns µs per event for plain and gzip bodies."""
    sh(["cargo", "bench", "-p", "gateway", "--bench", "floor", "--", "--warm-up-time", str(warm_up),
        "--measurement-time", str(measure), "_1000"], cwd=ROOT)
    out = {}
    for name in ("plain_1000", "gzip_1000"):
        p = os.path.join(ROOT, "target", "criterion", "floor", name, "new", "estimates.json")
        with open(p) as f:
            out[name] = json.load(f)["mean"]["point_estimate"] / 1000.0 / 1000.0
    return out


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(open("/proc/meminfo").readline().split()[1])
        mem = ", %.0f GiB RAM" % (kb / 1048576)
    except (OSError, ValueError, IndexError):
        pass
    return "%d vCPU (%s)%s, %s %s" % (os.cpu_count() or 0, model, mem, platform.system(), platform.release())


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def overrides():
    """The gateway settings this run takes from the environment (the harness
    passes its environment on), for the record beside its numbers; values of
    names that could hold a secret are left out."""
    secret = ("SECRET", "PASSWORD", "TOKEN", "KEY", "CREDENTIAL", "DSN", "SASL")
    out = []
    for name in sorted(os.environ):
        if name.startswith("OVERWATCH__"):
            hidden = any(s in name for s in secret)
            out.append("`%s`" % name if hidden else "`%s=%s`" % (name, os.environ[name]))
    return out


def up(env):
    """Starts the services and the gateway, and warms up connections, the UA
    cache and broker metadata. Returns the gateway's config file."""
    env.start_services()
    cfg = env.config()
    env.migrate_or_topics(cfg)
    env.start_gateway(cfg)
    loadtest_run(env, ["--rate", "20000:3"], "warmup")
    return cfg


class HealthSampler:
    """Polls the gateway's `/health` every `every` seconds on a thread: its RSS
    and how many ingest requests were in progress at that instant, so that an
    excursion of RSS can be told apart: memory requests in flight hold, or
    memory kept after them. Beside each poll it reads what the machine did
    since the last one: how long the gateway's threads were runnable but
    waiting for a CPU (`/proc/<pid>/task/*/schedstat`), and the CPU time the
    hypervisor took from this VM (steal, `/proc/stat`), so that a pile-up of
    requests can be told apart too: the machine starving the gateway, or the
    gateway (or the broker) slow with CPUs to spare."""

    def __init__(self, ops_port, pid, every=0.25):
        self.url = "http://127.0.0.1:%d/health" % ops_port
        self.pid = pid
        self.every = every
        # (seconds since start, RSS MiB, requests in progress, the gateway's
        # threads' wait for a CPU in ms per second, steal in % of one CPU)
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.start = time.monotonic()
        self.thread.start()

    def _run(self):
        last = (time.monotonic(), run_delay_ns(self.pid), steal_ticks())
        while not self.stop.wait(self.every):
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:
                    h = json.load(r)
            except urllib.error.HTTPError as e:  # 503 while not ready: same body
                h = json.load(e)
            except Exception:
                continue
            now = (time.monotonic(), run_delay_ns(self.pid), steal_ticks())
            dt = max(now[0] - last[0], 1e-3)
            waited = waited_ns(last[1], now[1])
            waited = waited / 1e6 / dt if waited is not None else None
            stolen = (now[2] - last[2]) / CLOCK_TICKS * 100 / dt if None not in (now[2], last[2]) else None
            last = now
            rss = (h.get("memory") or {}).get("rss_bytes")
            if rss is not None and h.get("ingest_in_progress") is not None:
                self.samples.append((now[0] - self.start, rss / 1048576, h["ingest_in_progress"], waited, stolen))

    def finish(self):
        self.stop.set()
        self.thread.join()
        return self.samples


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def run_delay_ns(pid):
    """Nanoseconds each of the process's threads has spent runnable but
    waiting for a CPU (the second field of its schedstat), by thread id; None
    when the process is gone."""
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    delays = {}
    for t in tasks:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                delays[t] = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return delays


def waited_ns(before, after):
    """The run-queue delay between two `run_delay_ns` readings, over the
    threads in both (a thread that started or ended in between counts for
    neither); None when either is missing."""
    if before is None or after is None:
        return None
    return sum(after[t] - before[t] for t in after.keys() & before.keys())


def steal_ticks():
    """The machine's steal time so far, in clock ticks (all CPUs); None when unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return None


def attribution(health, base):
    """What was in progress when RSS was within the band and when above it,
    and how starved of CPU the gateway was then."""
    after = [x for x in health if x[0] >= 60]
    inside = [x for x in after if x[1] <= base * 1.1]
    above = [x for x in after if x[1] > base * 1.1]
    med = lambda v: sorted(v)[len(v) // 2] if v else 0

    def starved(xs):
        w = [x[3] for x in xs if x[3] is not None]
        s = [x[4] for x in xs if x[4] is not None]
        return "the gateway's threads waited %.0f ms per second for a CPU, steal %.1f%% of a CPU (medians)" % (
            med(w), med(s))

    text = "requests in progress (`/health` every 0.25 s): median %d while RSS was within the band (%s)" % (
        med([x[2] for x in inside]), starved(inside))
    if above:
        text += ", median %d (highest %d) while it was above, in %d of %d samples (%s)" % (
            med([x[2] for x in above]), max(x[2] for x in above), len(above), len(after), starved(above))
    return text


def in_band(mib, base):
    """Whether an RSS value is within the soak's ±10% of `base`."""
    return base * 0.9 <= mib <= base * 1.1


def minute_medians(samples, base):
    """RSS as each minute's median after the first, against `base`: what the
    gateway keeps, with the seconds that requests in flight (a stall of the
    broker or the machine) add left out. Printed beside the verdict, which
    stays on the one-second samples."""
    minutes = {}
    for t, m in samples:
        if t >= 60:
            minutes.setdefault(int(t // 60), []).append(m)
    meds = [sorted(v)[len(v) // 2] for _, v in sorted(minutes.items()) if len(v) >= 30]
    if not meds:
        return "no whole minute after the first"
    lo, hi = min(meds), max(meds)
    return "each minute's median RSS after the first: %.1f–%.1f MiB (%+.1f%% / %+.1f%%), %s" % (
        lo, hi, (lo - base) / base * 100, (hi - base) / base * 100,
        "within ±10%" if in_band(lo, base) and in_band(hi, base) else "outside ±10%")


def outside_minutes(samples, base):
    """Which minutes the one-second samples outside the band fell in, with
    how many in each: a stall shows as a run of minutes, a drift as every
    minute from some point on."""
    per = {}
    for t, m in samples:
        if t >= 60 and not in_band(m, base):
            per[int(t // 60)] = per.get(int(t // 60), 0) + 1
    return ", ".join("minute %d: %d" % kv for kv in sorted(per.items()))


def soak(args):
    """Runs at `args.rate` events/s (or half the maximum measured first) for
    `args.seconds`; RSS must stay within ±10% of its value after the first minute.

    The broker is tansu with `args.broker_storage`: by default its null engine,
    which acknowledges every produce request and keeps nothing. The gateway's
    path is the same (acks=all, idempotent producer, delivery reports); an
    in-memory broker on the same machine cannot hold an hour of events (it
    held about 190 M by minute 42 of the first soak and overloaded the
    machine). The maximum is measured against the same broker."""
    # Opened first: a path that cannot be written fails now, not after the hour.
    keep = open(args.json, "w") if args.json else None
    env = Env(args.broker_storage, name="soak")
    try:
        up(env)
        rate = args.rate
        maximum = None
        if rate <= 0:
            m = loadtest_run(env, ["--concurrency", "8", "--duration", "20"], "maximum")
            maximum = m["phases"][0]["events_per_sec"]
            rate = int(maximum / 2)
            log("maximum %.0f events/s; soaking at half: %d events/s" % (maximum, rate))
        health = HealthSampler(env.ops_port, env.gateway.proc.pid)
        try:
            r = loadtest_run(env, ["--rate", "%d:%d" % (rate, args.seconds)], "soak")
        finally:
            health = health.finish()
    finally:
        env.cleanup()
    samples = r["rss_samples_mib"]
    p = r["phases"][0]
    first = [m for t, m in samples if 50 <= t <= 70] or [samples[0][1]]
    last = [m for t, m in samples if t >= samples[-1][0] - 20]
    base = sum(first) / len(first)
    end = sum(last) / len(last)
    after = [m for t, m in samples if t >= 60]
    lo, hi = min(after), max(after)
    drift = (end - base) / base * 100
    ok = in_band(lo, base) and in_band(hi, base)
    outside = sum(1 for m in after if not in_band(m, base))
    at = "%d events/s" % rate + (" (half the maximum of %.0f measured first)" % maximum if maximum else "")
    summary = ("%d s at %s: %.0f events/s accepted, p99 %.1f ms, gateway CPU %.2f µs/event, statuses %s; "
               "RSS at 1 min %.1f MiB, at the end %.1f MiB (%+.1f%%), range after 1 min %.1f–%.1f MiB "
               "(%+.1f%% / %+.1f%%), outside the band in %d of %d one-second samples (%.1f%%): %s"
               % (args.seconds, at, p["events_per_sec"], p["latency_ms"]["p99"], p.get("cpu_us_per_event") or 0,
                  ", ".join("%s: %d" % kv for kv in sorted(p["statuses"].items())),
                  base, end, drift, lo, hi, (lo - base) / base * 100, (hi - base) / base * 100,
                  outside, len(after), outside * 100 / max(len(after), 1),
                  "within ±10%" if ok else "OUTSIDE ±10%"))
    if outside:
        summary += " (%s)" % outside_minutes(samples, base)
    summary += "; " + attribution(health, base) + "; " + minute_medians(samples, base)
    print(summary)
    if keep:
        with keep as f:
            json.dump({"rate": rate, "base_mib": base, "rss_samples_mib": samples,
                       "health": [dict(zip(("t", "rss_mib", "in_progress", "cpu_wait_ms_per_s", "steal_pct"), h))
                                  for h in health]}, f)
    if not args.no_doc:
        settings = overrides()
        svg = os.path.join(ROOT, "docs", "soak-rss.svg")
        with open(svg, "w") as f:
            f.write(rss_svg(samples, base, "gateway RSS during `make soak` at %s, commit %s" % (at, commit())))
        write_section("Soak", "\n".join([
            "## Soak", "",
            "`make soak` (`python3 loadtest/harness.py soak`): %s, %s, commit `%s`, tansu with storage `%s` on "
            "the same machine%s." % (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                     machine(), commit(), args.broker_storage,
                                     "; settings from the environment: " + ", ".join(settings)
                                     if settings else ""), "",
            summary + ".", "",
            "![gateway RSS over the soak, with the ±10% band around its value after one minute](soak-rss.svg)", ""]))
    return 0 if ok else 1


def rss_svg(samples, base, title):
    """RSS (MiB) over time as an SVG line, with the ±10% band around `base`."""
    w, h, left, bottom, top = 720, 300, 60, 40, 30
    t_max = max(t for t, _ in samples) or 1
    m_max = max(max(m for _, m in samples), base * 1.1) * 1.05
    x = lambda t: left + (w - left - 10) * t / t_max
    y = lambda m: h - bottom - (h - bottom - top) * m / m_max
    pts = " ".join("%.1f,%.1f" % (x(t), y(m)) for t, m in samples)
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
           'font-size="11">' % (w, h),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="18" font-size="13">%s</text>' % (left, title.replace("&", "&amp;").replace("<", "&lt;")),
           '<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="#e6f2e6"/>'
           % (left, y(base * 1.1), w - left - 10, y(base * 0.9) - y(base * 1.1)),
           '<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#7a7" stroke-dasharray="4 3"/>'
           % (left, y(base), w - 10, y(base)),
           '<polyline fill="none" stroke="#1f5fa8" stroke-width="1.2" points="%s"/>' % pts,
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, h - bottom, w - 10, h - bottom),
           '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (left, top, left, h - bottom)]
    for i in range(6):
        m = m_max * i / 5
        out.append('<text x="%d" y="%.1f" text-anchor="end">%.0f</text>' % (left - 4, y(m) + 4, m))
        t = t_max * i / 5
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%.0f</text>' % (x(t), h - bottom + 14, t / 60))
    out.append('<text x="%d" y="%d" text-anchor="middle">minutes</text>' % ((w + left) // 2, h - 6))
    out.append('<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">RSS MiB</text>'
               % ((h - bottom + top) // 2, (h - bottom + top) // 2))
    out.append("</svg>\n")
    return "\n".join(out)


def write_section(name, section):
    """Replaces the `## name` section of docs/benchmarks.md (appends it when missing)."""
    doc = os.path.join(ROOT, "docs", "benchmarks.md")
    text = open(doc).read()
    head, sep, tail = text.partition("\n## %s\n" % name)
    rest = ""
    if sep:
        nxt = tail.find("\n## ")
        rest = tail[nxt:] if nxt >= 0 else ""
    with open(doc, "w") as f:
        f.write(head.rstrip() + "\n\n" + section.rstrip() + "\n" + rest)
    log("wrote the %s section of %s" % (name, doc))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak")
    s.add_argument("--seconds", type=int, default=600)
    s.add_argument("--rate", type=int, default=20000, help="events/s; 0: half the maximum, measured first")
    s.add_argument("--no-doc", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    s.add_argument("--json", help="also write every RSS sample and /health poll here")
    s.add_argument("--broker-storage", default="null://tansu/",
                   help="tansu's storage engine (null: acknowledge and keep nothing; memory://tansu/ keeps all)")
    a = ap.parse_args()
    return soak(a)


if __name__ == "__main__":
    sys.exit(main())
