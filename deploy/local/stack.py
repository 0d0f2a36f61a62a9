#!/usr/bin/env python3
"""Runs Overwatch's local stack as plain processes (no Docker).

  stack.py dev    the whole stack in the foreground: tansu broker, ClickHouse
                  (chdb behind chserver.py), `workerd migrate`, gateway and
                  `workerd run`; Ctrl-C stops everything in order.
  stack.py run -- CMD ...
                  starts broker + ClickHouse on free ports with throw-away data,
                  exports OVERWATCH_TEST_KAFKA, OVERWATCH_TEST_CLICKHOUSE,
                  OVERWATCH_TANSU_BIN and OVERWATCH_CH_PYTHON, runs CMD, stops everything, exits with
                  CMD's status (what `make test` uses).
  stack.py query SQL
                  sends SQL to the dev ClickHouse and prints the answer.

Prerequisites come from deploy/local/provision.sh (cached outside the repo in
$OVERWATCH_CACHE, default ~/.cache/overwatch). Every child runs in its own
process group and is told to die with this process (PR_SET_PDEATHSIG), so
nothing is left behind, even if this script is killed.
"""

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("OVERWATCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "overwatch")
TANSU_VERSION = "0.6.0"
TANSU_BIN = os.path.join(CACHE, "tansu-" + TANSU_VERSION, "bin", "tansu")
VENV_PY = os.path.join(CACHE, "venv", "bin", "python")
S3S_VERSION = "0.13.0-alpha.3"
S3S_BIN = os.path.join(CACHE, "s3s-fs-" + S3S_VERSION, "bin", "s3s-fs")
CHSERVER = os.path.join(ROOT, "deploy", "local", "chserver.py")
DEV_TENANT = "00000000-0000-0000-0000-000000000000"

PR_SET_PDEATHSIG = 1


def _die_with_parent():
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def fail(msg):
    sys.stderr.write("stack: " + msg + "\n")
    sys.exit(2)


def check_prereqs(need_bins=()):
    if not os.path.exists(TANSU_BIN):
        fail("the tansu broker is not built (%s); run `make provision`" % TANSU_BIN)
    if not os.path.exists(VENV_PY):
        fail("the ClickHouse venv is missing (%s); run `make provision`" % VENV_PY)
    if not os.access(S3S_BIN, os.X_OK):
        fail("the S3-compatible test server is not built (%s); run `make provision`" % S3S_BIN)
    for b in need_bins:
        if not os.path.exists(b):
            fail("%s is not built; run `cargo build`" % b)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_busy(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Proc:
    """A child process whose output goes to a log file and, optionally, our stdout."""

    def __init__(self, name, argv, log_dir, cwd=None, env=None, echo=False):
        self.name = name
        self.log_path = os.path.join(log_dir, name + ".log")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if echo else self.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        if echo:
            threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in iter(self.proc.stdout.readline, b""):
            self.log.write(line)
            self.log.flush()
            sys.stdout.write("%-8s| %s" % (self.name, line.decode("utf-8", "replace")))
            sys.stdout.flush()

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=15.0):
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                sys.stderr.write("stack: %s did not stop in %.0fs; killing it\n" % (self.name, timeout))
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self.log.close()

    def tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""


def wait_until(what, check, procs, timeout):
    deadline = time.monotonic() + timeout
    pause = 0.02
    while True:
        if check():
            return
        for p in procs:
            if not p.alive():
                raise RuntimeError("%s exited (status %s) while waiting for %s:\n%s"
                                   % (p.name, p.proc.returncode, what, p.tail()))
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Stack:
    def __init__(self, data_dir, kafka_port, ch_port, echo, broker_storage):
        self.data = data_dir
        self.kafka_port = kafka_port
        self.ch_port = ch_port
        self.echo = echo
        self.broker_storage = broker_storage
        self.procs = []
        self.logs = os.path.join(data_dir, "logs")
        os.makedirs(self.logs, exist_ok=True)

    @property
    def kafka(self):
        return "127.0.0.1:%d" % self.kafka_port

    @property
    def clickhouse(self):
        return "http://127.0.0.1:%d" % self.ch_port

    def start(self, name, argv, **kw):
        p = Proc(name, argv, self.logs, echo=self.echo, **kw)
        self.procs.append(p)
        return p

    def start_services(self):
        for port, what in ((self.kafka_port, "broker"), (self.ch_port, "ClickHouse")):
            if port_busy(port):
                fail("port %d for the %s is already in use (another `make dev`?)" % (port, what))
        broker_dir = os.path.join(self.data, "broker")
        os.makedirs(broker_dir, exist_ok=True)
        url = "tcp://127.0.0.1:%d" % self.kafka_port
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID")}
        broker = self.start("broker", [
            TANSU_BIN, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", self.broker_storage,
        ], cwd=broker_dir, env=env)
        ch = self.start("clickhouse", [
            VENV_PY, CHSERVER, "--host", "127.0.0.1", "--port", str(self.ch_port),
            "--path", os.path.join(self.data, "clickhouse"),
        ])
        wait_until("the broker on %s" % self.kafka, lambda: port_busy(self.kafka_port), [broker], 60)
        wait_until("ClickHouse on %s" % self.clickhouse, lambda: http_ok(self.clickhouse + "/ping"), [ch], 60)

    def stop(self):
        # Reverse order: apps first (the gateway flushes to the broker), broker last.
        for p in reversed(self.procs):
            p.stop()
        self.procs = []


def cmd_run(args):
    check_prereqs()
    if not args.cmd:
        fail("usage: stack.py run -- CMD ...")
    cmd = args.cmd[1:] if args.cmd[0] == "--" else args.cmd
    data = tempfile.mkdtemp(prefix="overwatch-test-")
    stack = Stack(data, free_port(), free_port(), echo=False, broker_storage="memory://tansu/")
    rc = 1
    try:
        stack.start_services()
        env = dict(os.environ)
        env.update({
            "OVERWATCH_TEST_KAFKA": stack.kafka,
            "OVERWATCH_TEST_CLICKHOUSE": stack.clickhouse,
            "OVERWATCH_TANSU_BIN": TANSU_BIN,
            "OVERWATCH_CH_PYTHON": VENV_PY,
            "OVERWATCH_S3S_BIN": S3S_BIN,
        })
        print("stack: broker %s, ClickHouse %s, logs %s" % (stack.kafka, stack.clickhouse, stack.logs), flush=True)
        child = subprocess.Popen(cmd, env=env)
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            rc = child.wait()
        if rc != 0:
            for p in stack.procs:
                sys.stderr.write("---- last lines of %s ----\n%s\n" % (p.name, p.tail()))
    except RuntimeError as e:
        sys.stderr.write("stack: %s\n" % e)
    finally:
        stack.stop()
        if rc == 0 and not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print("stack: data and logs kept in %s" % data, flush=True)
    return rc


def cmd_dev(args):
    target = os.path.join(ROOT, "target", args.profile)
    gateway_bin = os.path.join(target, "gateway")
    workerd_bin = os.path.join(target, "workerd")
    check_prereqs((gateway_bin, workerd_bin))
    data = os.path.abspath(args.data)
    stack = Stack(data, args.kafka_port, args.clickhouse_port, echo=True,
                  broker_storage="sqlite://tansu.db")
    stopping = {"flag": False}

    def on_signal(_signo, _frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = dict(os.environ)
    env.update({
        "OVERWATCH__KAFKA__BROKERS": stack.kafka,
        "OVERWATCH__CLICKHOUSE__URL": stack.clickhouse,
        "OVERWATCH__CLICKHOUSE__KAFKA_BROKERS": stack.kafka,
        "OVERWATCH__GATEWAY__LISTEN": "127.0.0.1:%d" % args.gateway_port,
        "OVERWATCH__WORKERD__LISTEN": "127.0.0.1:%d" % args.workerd_port,
    })
    config = ["--config", os.path.join(ROOT, "config", "dev.toml")]
    rc = 0
    try:
        stack.start_services()
        migrate = subprocess.run([workerd_bin] + config + ["migrate"], env=env)
        if migrate.returncode != 0:
            raise RuntimeError("workerd migrate failed (status %d)" % migrate.returncode)
        # The development tenant (its key `secret` comes from config/dev.toml).
        seed = subprocess.run([workerd_bin] + config + ["tenant", "create", "--id", DEV_TENANT,
                                                        "--name", "development", "--tier", "enterprise"],
                              env=env, capture_output=True, text=True)
        if seed.returncode != 0 and "already exists" not in seed.stderr:
            raise RuntimeError("seeding the development tenant failed: %s" % seed.stderr.strip())
        gw = stack.start("gateway", [gateway_bin] + config, env=env)
        wk = stack.start("workerd", [workerd_bin] + config + ["run"], env=env)
        wait_until("the gateway to be ready",
                   lambda: http_ok("http://127.0.0.1:%d/health/ready" % args.gateway_port), [gw], 60)
        wait_until("workerd to be live",
                   lambda: http_ok("http://127.0.0.1:%d/health/live" % args.workerd_port), [wk], 60)
        print(DEV_BANNER % {"gw": args.gateway_port, "ch": args.clickhouse_port,
                            "k": args.kafka_port, "wk": args.workerd_port, "data": data}, flush=True)
        while not stopping["flag"]:
            for p in stack.procs:
                if not p.alive():
                    raise RuntimeError("%s exited with status %s" % (p.name, p.proc.returncode))
            time.sleep(0.2)
        print("stack: stopping", flush=True)
    except RuntimeError as e:
        sys.stderr.write("stack: %s\n" % e)
        rc = 1
    finally:
        stack.stop()
    return rc


DEV_BANNER = """
Overwatch is up.
  gateway     http://127.0.0.1:%(gw)d   (POST /ingest, GET /health/live, /health/ready)
              http://127.0.0.1:9090   (operations: GET /metrics, /health)
  workerd     http://127.0.0.1:%(wk)d   (GET /health)
  broker      127.0.0.1:%(k)d
  ClickHouse  http://127.0.0.1:%(ch)d   (make ch-query Q="SELECT count() FROM overwatch.events")
  data        %(data)s   (make clean-data wipes it)
Development key: Bearer 00000000-0000-0000-0000-000000000000:secret
Ctrl-C stops everything.
"""


def cmd_query(args):
    url = "http://127.0.0.1:%d/?default_format=PrettyCompactMonoBlock" % args.clickhouse_port
    req = urllib.request.Request(url, data=args.sql.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            sys.stdout.write(r.read().decode("utf-8", "replace"))
        return 0
    except urllib.error.HTTPError as e:
        sys.stderr.write(e.read().decode("utf-8", "replace"))
        return 1
    except (urllib.error.URLError, OSError) as e:
        sys.stderr.write("stack: ClickHouse is not reachable on port %d (is `make dev` running?): %s\n"
                         % (args.clickhouse_port, e))
        return 1


def main():
    env_port = lambda name, default: int(os.environ.get(name, default))
    ap = argparse.ArgumentParser(description="Overwatch local stack")
    ap.add_argument("--kafka-port", type=int, default=env_port("KAFKA_PORT", 9092))
    ap.add_argument("--clickhouse-port", type=int, default=env_port("CLICKHOUSE_PORT", 8123))
    ap.add_argument("--gateway-port", type=int, default=env_port("GATEWAY_PORT", 8080))
    ap.add_argument("--workerd-port", type=int, default=env_port("WORKERD_PORT", 9091))
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dev")
    d.add_argument("--data", default=os.path.join(ROOT, ".data"))
    d.add_argument("--profile", default="debug")
    r = sub.add_parser("run")
    r.add_argument("--keep", action="store_true", help="keep data and logs")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    q = sub.add_parser("query")
    q.add_argument("sql")
    args = ap.parse_args()
    return {"dev": cmd_dev, "run": cmd_run, "query": cmd_query}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
