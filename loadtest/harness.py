#!/usr/bin/env python3
"""Drives the benchmark, soak and chaos runs against real local processes.

    (make bench is loadtest/bench.py, make profile loadtest/profile.py; both use this module)
    python3 loadtest/harness.py soak    # make soak: 10 minutes at 20k events/s, RSS drift
    python3 loadtest/harness.py chaos   # make chaos: kill broker, gateway, ClickHouse under load

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
import signal
import subprocess
import sys
import tempfile
import time
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


def loadtest_run(env, args, name):
    out = os.path.join(env.dir, name + ".json")
    argv = [LOADTEST, "run", "--url", env.url, "--tenants", str(TENANTS), "--json", out] + args
    if env.gateway:
        argv += ["--pid", str(env.gateway.proc.pid)]
    log("%s: %s" % (name, " ".join(argv[2:])))
    sh(argv)
    with open(out) as f:
        return json.load(f)


def floor_us_per_event():
    """Runs the criterion floor benchmark; returns µs per event for plain and gzip bodies."""
    sh(["cargo", "bench", "-p", "gateway", "--bench", "floor", "--", "--warm-up-time", "2",
        "--measurement-time", "8"], cwd=ROOT)
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


def up(env):
    """Starts the services and the gateway, and warms up connections, the UA
    cache and broker metadata. Returns the gateway's config file."""
    env.start_services()
    cfg = env.config()
    env.migrate_or_topics(cfg)
    env.start_gateway(cfg)
    loadtest_run(env, ["--rate", "20000:3"], "warmup")
    return cfg


def soak(args):
    env = Env("memory://tansu/", name="soak")
    try:
        up(env)
        r = loadtest_run(env, ["--rate", "20000:%d" % args.seconds], "soak")
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
    ok = lo >= base * 0.9 and hi <= base * 1.1
    summary = ("soak %d s at 20k ev/s: %.0f ev/s accepted, p99 %.1f ms, CPU %.2f µs/event; RSS at 1 min %.1f MiB, "
               "at end %.1f MiB (%+.1f%%), range after 1 min %.1f–%.1f MiB: %s"
               % (args.seconds, p["events_per_sec"], p["latency_ms"]["p99"], p.get("cpu_us_per_event") or 0,
                  base, end, drift, lo, hi, "within ±10%" if ok else "OUTSIDE ±10%"))
    print(summary)
    with open(os.path.join(ROOT, "docs", "benchmarks.md"), "a") as f:
        f.write("\n**Soak** (`make soak`, %s, commit `%s`): %s.\n" % (
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit(), summary))
    return 0 if ok else 1


def chaos(args):
    """Broker (persistent storage), gateway and ClickHouse each killed and restarted
    under load; then every acknowledged id must be in ClickHouse exactly once."""
    env = Env("sqlite://tansu.db", clickhouse=True, name="chaos")
    ids = os.path.join(env.dir, "acked.ids")
    keep = False
    try:
        env.start_services()
        cfg = env.config()
        env.migrate_or_topics(cfg)
        env.start_gateway(cfg)
        total = args.seconds
        load = subprocess.Popen([LOADTEST, "run", "--url", env.url, "--tenants", str(TENANTS),
                                 "--rate", "%d:%d" % (args.rate, total), "--batch", "100", "--pool", "0",
                                 "--ids-out", ids], stdout=subprocess.PIPE, text=True)
        t0 = time.monotonic()

        def at(frac):
            time.sleep(max(0.0, t0 + total * frac - time.monotonic()))

        at(0.15)
        log("SIGKILL broker")
        broker = env.broker_proc
        os.killpg(broker.proc.pid, signal.SIGKILL)
        broker.proc.wait()
        at(0.25)
        log("restart broker")
        env.stack.procs.remove(broker)
        broker_dir = os.path.join(env.dir, "broker")
        url = "tcp://%s" % env.stack.kafka
        env.stack.start("broker", [stack.TANSU_BIN, "broker", "--listener-url", url, "--advertised-listener-url",
                                   url, "--storage-engine", "sqlite://tansu.db"], cwd=broker_dir)
        at(0.45)
        log("SIGKILL gateway")
        os.killpg(env.gateway.proc.pid, signal.SIGKILL)
        env.gateway.proc.wait()
        env.stack.procs.remove(env.gateway)
        at(0.50)
        log("restart gateway")
        env.start_gateway(cfg)
        at(0.65)
        # A crash (SIGKILL). The rejoining consumer can get no partitions from the
        # tansu broker; deploy/local/chserver.py re-attaches such a table after
        # 60 s (docs/benchmarks.md).
        log("SIGKILL ClickHouse")
        ch = next(p for p in env.stack.procs if p.name == "clickhouse")
        os.killpg(ch.proc.pid, signal.SIGKILL)
        ch.proc.wait()
        env.stack.procs.remove(ch)
        at(0.75)
        log("restart ClickHouse")
        ch = env.stack.start("clickhouse", [stack.VENV_PY, stack.CHSERVER, "--host", "127.0.0.1", "--port",
                                            str(env.stack.ch_port), "--path", os.path.join(env.dir, "clickhouse")])
        stack.wait_until("ClickHouse", lambda: stack.http_ok(env.stack.clickhouse + "/ping"), [ch], 60)
        out, _ = load.communicate()
        print(out, end="")
        if load.returncode != 0:
            raise RuntimeError("loadtest failed")
        log("load done; waiting for ClickHouse to consume every acknowledged event")
        deadline = time.monotonic() + args.settle
        verdict = None
        while time.monotonic() < deadline:
            r = subprocess.run([LOADTEST, "check", "--ids", ids, "--clickhouse", env.stack.clickhouse,
                                "--tenants", str(TENANTS)], capture_output=True, text=True)
            try:
                verdict = json.loads(r.stdout.strip().splitlines()[0])
            except (ValueError, IndexError):
                verdict = None
            if verdict and verdict["lost"] == 0:
                break
            time.sleep(5)
        print("chaos verdict: %s" % json.dumps(verdict))
        ok = bool(verdict) and verdict["lost"] == 0 and verdict["duplicates_after_dedup"] == 0
        if verdict and verdict["lost"] > 0:
            # Lost before the broker, or not consumed by ClickHouse (yet)?
            r = subprocess.run([LOADTEST, "check", "--ids", ids, "--clickhouse", env.stack.clickhouse,
                                "--tenants", str(TENANTS), "--brokers", env.stack.kafka],
                               capture_output=True, text=True)
            print(r.stdout, r.stderr)
            keep = True
        if ok:
            with open(os.path.join(ROOT, "docs", "benchmarks.md"), "a") as f:
                f.write("\n**Chaos** (`make chaos`, %s, commit `%s`): %d events/s for %d s with the broker "
                        "(SQLite storage) SIGKILLed and restarted, the gateway SIGKILLed and restarted, and "
                        "ClickHouse SIGKILLed and restarted: %d events acknowledged, %d found in ClickHouse, "
                        "%d lost, %d duplicates after deduplication (%d before).\n" % (
                            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                            commit(), args.rate, total, verdict["acknowledged"], verdict["found"],
                            verdict["lost"], verdict["duplicates_after_dedup"], verdict["duplicates_before_dedup"]))
        return 0 if ok else 1
    finally:
        if keep:
            env.stop()
            log("data and logs kept in %s" % env.dir)
        else:
            env.cleanup()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak")
    s.add_argument("--seconds", type=int, default=600)
    c = sub.add_parser("chaos")
    c.add_argument("--seconds", type=int, default=60)
    c.add_argument("--rate", type=int, default=3000)
    c.add_argument("--settle", type=int, default=240)
    a = ap.parse_args()
    if a.cmd == "soak":
        return soak(a)
    return chaos(a)


if __name__ == "__main__":
    sys.exit(main())
