#!/usr/bin/env python3
"""Local ClickHouse for development and tests.

Serves the ClickHouse HTTP interface on loopback in front of the embedded
ClickHouse engine shipped by PyPI's ``chdb-core``.  Production runs a real
ClickHouse server; this front exists because these machines have no Docker
engine.  It implements what the ``clickhouse`` crate and our migrations use:

* ``GET /ping`` and ``GET /`` -> ``Ok.``
* the ``query`` URL parameter and/or the request body (concatenated as the
  real server does, so ``INSERT ... FORMAT RowBinary`` with a binary body
  works), ``Content-Length`` or chunked bodies;
* ``decompress=1`` bodies made of ClickHouse-compressed LZ4 blocks and
  ``Content-Encoding: gzip`` bodies;
* ``database`` and ``default_format`` parameters, any other parameter applied
  as a setting for that one query;
* errors as HTTP 500 with the ``X-ClickHouse-Exception-Code`` header.

Tests can also stop a query at a chosen moment, which a real server cannot
offer but race tests need (``POST /_overwatch/hold`` with a regular expression
as the body answers a hold id; every later query whose text matches waits
before it runs, ``GET /_overwatch/held?id=N`` counts the waiting ones and
``POST /_overwatch/release?id=N`` lets them go). Held queries do not hold the
engine lock, so the rest of the world goes on meanwhile.

chdb serves one query at a time, so queries are serialized behind a lock while
HTTP connections are handled concurrently.
"""

import argparse
import gzip
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
import urllib.parse

try:
    from chdb import _chdb
except ImportError:  # pragma: no cover - reported to the operator
    sys.stderr.write("chserver: the chdb-core package is missing; run `make provision`\n")
    sys.exit(3)

try:
    import lz4.block
except ImportError:  # pragma: no cover
    lz4 = None

MAX_BODY = 512 * 1024 * 1024
# Parameters that are part of the HTTP protocol rather than query settings.
PROTOCOL_PARAMS = {
    "query", "database", "default_format", "decompress", "compress", "user", "password",
    "query_id", "session_id", "session_timeout", "session_check", "wait_end_of_query",
    "enable_http_compression", "buffer_size", "quota_key", "http_response_buffer_size",
    "max_result_bytes", "default_session_timeout",
}
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CODE_RE = re.compile(r"Code: (\d+)")
KAFKA_CREATE = re.compile(
    r"^\s*CREATE\s+TABLE\s+(IF\s+NOT\s+EXISTS\s+)?(?P<name>[`\w.]+).*ENGINE\s*=\s*Kafka",
    re.IGNORECASE | re.DOTALL,
)


class ClickHouseError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


# `INSERT INTO <table>[(<columns>)] FORMAT <name>` with the data elsewhere.
INSERT_FORMAT = re.compile(
    rb"^\s*(?P<head>INSERT\s+INTO\s+.+?)\s+FORMAT\s+(?P<fmt>\w+)\s*$", re.IGNORECASE | re.DOTALL)
# The same statement followed by its data in one body (the data starts after the newline).
INSERT_FORMAT_INLINE = re.compile(
    rb"^(\s*INSERT\s+INTO\s+[^\n]+?\s+FORMAT\s+\w+)[ \t]*\r?\n", re.IGNORECASE)
KAFKA_ENGINE = re.compile(r"\bENGINE\s*=\s*Kafka\b", re.IGNORECASE)
# A statement that ends a table's consumers (DROP or DETACH of one table).
TABLE_GONE = re.compile(r"^\s*(DROP|DETACH)\s+TABLE\s+(IF\s+EXISTS\s+)?(?P<name>[`\w.]+)",
                        re.IGNORECASE)
IDENT_PART = re.compile(r"`((?:[^`\\]|\\.)*)`|(\w+)")
KAFKA_SETTING = r"\b%s\s*=\s*'((?:[^'\\]|\\.)*)'"


def kafka_group_and_brokers(engine):
    """The consumer group and broker list of a Kafka table's ``engine_full``, or None."""
    group = re.search(KAFKA_SETTING % "kafka_group_name", engine)
    brokers = re.search(KAFKA_SETTING % "kafka_broker_list", engine)
    return (group.group(1), brokers.group(1)) if group and brokers else None


PARKED_DIR = "overwatch-parked"


def park_kafka_tables(path):
    """Moves the metadata of Kafka engine tables out of chdb's sight before it starts.

    chdb fails to start at all when a Kafka engine table is attached at startup
    (the same spurious 'Shutdown was called' it answers on CREATE). Parked tables
    are attached again once the engine is up (``Engine.reattach``); a start that
    was interrupted leaves them in ``<path>/overwatch-parked`` and the next start
    picks them up from there.
    """
    parked_root = os.path.join(path, PARKED_DIR)
    meta = os.path.join(path, "metadata")
    if os.path.isdir(meta):
        for db in sorted(os.listdir(meta)):
            dbdir = os.path.join(meta, db)
            if not os.path.isdir(dbdir):
                continue
            for name in sorted(os.listdir(dbdir)):
                full = os.path.join(dbdir, name)
                if not name.endswith(".sql"):
                    continue
                with open(full, encoding="utf-8") as f:
                    text = f.read()
                if KAFKA_ENGINE.search(text):
                    os.makedirs(os.path.join(parked_root, db), exist_ok=True)
                    os.replace(full, os.path.join(parked_root, db, name))
    parked = []
    if os.path.isdir(parked_root):
        for db in sorted(os.listdir(parked_root)):
            for name in sorted(os.listdir(os.path.join(parked_root, db))):
                full = os.path.join(parked_root, db, name)
                with open(full, encoding="utf-8") as f:
                    text = f.read()
                table = urllib.parse.unquote(name[: -len(".sql")])
                parked.append((urllib.parse.unquote(db), table, text, full))
    return parked


# Where the watchdog records each Kafka table's consumer group members, so that
# a restarted front can make a killed process's members leave.
MEMBERS_FILE = "overwatch-kafka-members.json"
# librdkafka settings of every Kafka engine consumer (ClickHouse's <kafka> section).
# chdb's consumers never send LeaveGroup when their table is dropped or the
# process dies, and the tansu broker keeps such a member, and a dead group leader
# blocks everyone else's SyncGroup, until its session times out (librdkafka's
# default: 45 s). A short session bounds what a member that could not be made to
# leave (a crash between two recordings) costs.
KAFKA_CONFIG = """<clickhouse>
  <kafka>
    <session_timeout_ms>10000</session_timeout_ms>
    <heartbeat_interval_ms>2000</heartbeat_interval_ms>
  </kafka>
</clickhouse>
"""


class Engine:
    """One chdb connection; every query goes through ``run`` under a lock."""

    def __init__(self, path):
        self.tmp = os.path.join(path, "overwatch-tmp")
        os.makedirs(self.tmp, exist_ok=True)
        parked = park_kafka_tables(path)
        # The members of the last process (killed, say) leave before new ones join.
        self.members_file = os.path.join(path, MEMBERS_FILE)
        leave_recorded(self.members_file)
        self.recorded = {}
        config = os.path.join(self.tmp, "overwatch-chdb.xml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(KAFKA_CONFIG)
        self.conn = _chdb.connect(path + "?config-file=" + urllib.parse.quote(config))
        self.lock = threading.Lock()
        self.reattach(parked)

    def reattach(self, parked):
        for db, table, text, parked_path in parked:
            name = quote_ident(db) + b"." + quote_ident(table)
            sql = re.sub(r"^\s*ATTACH\s+TABLE\s+_\b", "ATTACH TABLE " + name.decode(), text, count=1)
            try:
                self._exec(sql.encode())
            except ClickHouseError as err:
                if not (err.code == 49 and self._table_exists(name.decode())):
                    sys.stderr.write("chserver: could not re-attach Kafka table %s: %s (metadata kept in %s)\n"
                                     % (name.decode(), err, parked_path))
                    continue
            os.remove(parked_path)

    def _exec(self, sql, fmt="TabSeparated"):
        try:
            res = self.conn.query(sql, fmt)
        except Exception as exc:  # chdb raises RuntimeError with the server text
            text = str(exc)
            m = CODE_RE.search(text)
            raise ClickHouseError(int(m.group(1)) if m else 1002, text) from None
        if hasattr(res, "has_error") and res.has_error():
            text = res.error_message()
            m = CODE_RE.search(text)
            raise ClickHouseError(int(m.group(1)) if m else 1002, text)
        return res.bytes() if res is not None else b""

    def run(self, sql, database, fmt, settings, insert_data=None):
        """Runs one query; ``insert_data`` is the data of an ``INSERT ... FORMAT``.

        chdb splits its input into statements with its SQL lexer, so data appended
        to the query text can be cut wherever the bytes happen to look like the
        end of a statement (seen with RowBinary). Insert data therefore goes
        through a temporary file and ``FROM INFILE``.
        """
        if insert_data is not None:
            fd, path = tempfile.mkstemp(suffix=".rows", dir=self.tmp)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(insert_data)
                m = INSERT_FORMAT.match(sql)
                sql = m.group("head") + b" FROM INFILE " + quote_literal(path) + b" FORMAT " + m.group("fmt")
                return self._run(sql, database, fmt, settings)
            finally:
                os.unlink(path)
        return self._run(sql, database, fmt, settings)

    def _run(self, sql, database, fmt, settings):
        with self.lock:
            applied = []
            try:
                if database:
                    self._exec(b"USE " + quote_ident(database))
                for name, value in settings:
                    self._exec(b"SET " + name.encode() + b" = " + quote_literal(value))
                    applied.append(name)
                try:
                    m = TABLE_GONE.match(sql.decode("utf-8", "replace"))
                    if m:
                        return self._end_consumers(m.group("name"), lambda: self._exec(sql, fmt))
                    return self._exec(sql, fmt)
                except ClickHouseError as err:
                    if err.code == 49 and "Shutdown was called" in str(err):
                        # chdb answers a spurious LOGICAL_ERROR when it creates a Kafka
                        # engine table although the table is created and works.
                        m = KAFKA_CREATE.match(sql.decode("utf-8", "replace"))
                        if m and self._table_exists(m.group("name")):
                            return b""
                    raise
            finally:
                for name in applied:
                    try:
                        self._exec(b"SET " + name.encode() + b" = DEFAULT")
                    except ClickHouseError:
                        pass
                if database:
                    try:
                        self._exec(b"USE default")
                    except ClickHouseError:
                        pass

    def watch_kafka_consumers(self, stuck_after=25.0, every=2.0):
        """Records every Kafka table's group members, and re-attaches a table
        whose consumer has held no partitions for ``stuck_after`` seconds (again
        every ``stuck_after`` seconds until it holds some).

        The record (``MEMBERS_FILE``) is for a crash: the dead process's members
        would stay in the group until their session (10 s, ``KAFKA_CONFIG``)
        expires, and meanwhile they hold partitions that nobody reads, or the
        broker forms the group with none for the live consumer; a restarted
        front makes them leave before its consumers join. The re-attach (DETACH,
        with the LeaveGroup of ``_end_consumers``, then ATTACH: a fresh join) is
        the last resort. A healthy consumer holds partitions within seconds,
        even when idle, so it never touches a working table.
        """
        empty_since = {}
        reported = {}
        while True:
            time.sleep(every)
            try:
                with self.lock:
                    rows = self._exec(
                        b"SELECT k.database AS db, k.table AS tbl, max(length(k.assignments.partition_id)) AS n, "
                        b"groupArray(k.consumer_id) AS members, any(t.engine_full) AS engine, "
                        b"arrayFlatten(groupArray(arrayMap((w, x) -> concat(toString(w), ' ', x), "
                        b"k.exceptions.time, k.exceptions.text))) AS errors "
                        b"FROM system.kafka_consumers AS k INNER JOIN system.tables AS t "
                        b"ON t.database = k.database AND t.name = k.table GROUP BY k.database, k.table",
                        "JSONEachRow")
            except ClickHouseError:
                continue
            now = time.monotonic()
            rows = [json.loads(line) for line in rows.decode("utf-8", "replace").splitlines() if line.strip()]
            self.record_members(rows)
            reported = report_consumer_errors(rows, reported)
            for row in rows:
                db, table, n = row["db"], row["tbl"], row["n"]
                key = (db, table)
                if int(n) > 0:
                    empty_since.pop(key, None)
                    continue
                first = empty_since.setdefault(key, now)
                if now - first < stuck_after:
                    continue
                name = (quote_ident(db) + b"." + quote_ident(table)).decode()
                sys.stderr.write("chserver: %s has consumed nothing for %.0fs (no partitions "
                                 "assigned); re-attaching it\n" % (name, now - first))
                with self.lock:
                    try:
                        self._end_consumers(name, lambda: self._exec(("DETACH TABLE " + name).encode()), wait=0)
                        self._exec(("ATTACH TABLE " + name).encode())
                    except ClickHouseError as err:
                        # ATTACH of a Kafka table answers the spurious code 49, yet works.
                        if not (err.code == 49 and self._table_exists(name)):
                            sys.stderr.write("chserver: re-attaching %s failed: %s\n" % (name, err))
                empty_since.pop(key, None)

    def record_members(self, rows):
        """Writes the current members of every Kafka table's group to ``MEMBERS_FILE``."""
        recorded = {}
        for row in rows:
            found = kafka_group_and_brokers(row["engine"])
            members = sorted(m for m in row["members"] if m)
            if found and members:
                recorded[row["db"] + "." + row["tbl"]] = {
                    "group": found[0], "brokers": found[1], "members": members}
        if recorded != self.recorded:
            tmp = self.members_file + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(recorded, f)
            os.replace(tmp, self.members_file)
            self.recorded = recorded

    def _end_consumers(self, name, statement, wait=10.0):
        """Runs ``statement`` (which drops or detaches table ``name``); when that
        is a Kafka engine table, its consumers then leave their group.

        chdb's consumers never send LeaveGroup, and the tansu broker keeps a
        departed member until its session expires; a departed leader leaves the
        group formed with no partitions for anyone (migrations replace the Kafka
        table in the same group). So this waits (up to ``wait`` seconds) until a
        consumer that is joining has joined, then runs the statement, then sends
        LeaveGroup for each member itself. Other queries wait meanwhile (the
        caller holds the engine's lock).
        """
        parts = [a or b for a, b in IDENT_PART.findall(name)]
        if not parts or len(parts) > 2:
            return statement()
        db = parts[0] if len(parts) == 2 else self._exec(b"SELECT currentDatabase()").decode().strip()
        table = parts[-1]
        where = b" WHERE database = " + quote_literal(db) + b" AND table = " + quote_literal(table)
        engine = self._exec(b"SELECT engine_full FROM system.tables WHERE database = " + quote_literal(db)
                            + b" AND name = " + quote_literal(table), "TabSeparatedRaw").decode("utf-8", "replace")
        if not KAFKA_ENGINE.search("ENGINE = " + engine):
            return statement()
        deadline = time.monotonic() + wait
        while True:
            rows = self._exec(b"SELECT consumer_id, length(assignments.partition_id) FROM system.kafka_consumers"
                              + where).decode("utf-8", "replace").splitlines()
            members = [r.split("\t") for r in rows if r.split("\t")[0]]
            if all(int(n) > 0 for _, n in members) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        result = statement()
        found = kafka_group_and_brokers(engine)
        for member, _ in members:
            if found:
                leave_group(found[1], found[0], member)
        return result

    def _table_exists(self, name):
        return self._exec(b"EXISTS TABLE " + name.encode()).strip() == b"1"

    def close(self):
        with self.lock:
            self.conn.close()


def report_consumer_errors(rows, reported):
    """Writes each Kafka table's consumer exceptions not written before (chdb
    keeps them only in ``system.kafka_consumers``, which goes with the table),
    so a test that waited in vain for consumption has the reason in the log.
    Returns what has been written, for the tables that still exist."""
    now = {}
    for row in rows:
        key = row["db"] + "." + row["tbl"]
        seen = reported.get(key, set())
        for text in row.get("errors") or []:
            if text not in seen:
                sys.stderr.write("chserver: %s consumer error: %s\n" % (key, text.replace("\n", " ")[:500]))
        now[key] = set(row.get("errors") or [])
    return now


def leave_recorded(path):
    """Makes every member recorded in ``path`` leave its group, then removes it."""
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return
    for table, entry in recorded.items():
        for member in entry.get("members", []):
            sys.stderr.write("chserver: %s's consumer %s of the last run leaves group %s\n"
                             % (table, member, entry["group"]))
            leave_group(entry["brokers"], entry["group"], member)
    os.remove(path)


def leave_group(brokers, group, member):
    """Sends a Kafka LeaveGroup (v0) for ``member`` to the first of ``brokers``
    that answers (the local broker is its own group coordinator)."""
    def string(b):
        return struct.pack(">h", len(b)) + b
    msg = (struct.pack(">hhi", 13, 0, 1) + string(b"overwatch-chserver")
           + string(group.encode()) + string(member.encode()))
    for broker in brokers.split(","):
        host, _, port = broker.strip().rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(struct.pack(">i", len(msg)) + msg)
                head = s.recv(4)
                if len(head) == 4:
                    s.recv(struct.unpack(">i", head)[0])
            return
        except (OSError, ValueError):
            continue
    sys.stderr.write("chserver: could not send LeaveGroup for %s in %s to %s\n" % (member, group, brokers))


def quote_ident(name):
    return b"`" + name.replace("\\", "\\\\").replace("`", "\\`").encode() + b"`"


def quote_literal(value):
    return b"'" + value.replace("\\", "\\\\").replace("'", "\\'").encode() + b"'"


def decompress_blocks(data):
    """Decodes a stream of ClickHouse-compressed blocks (checksum, method, sizes, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 25:
            raise ClickHouseError(271, "truncated compressed block header")
        method = data[pos + 16]
        compressed, raw = struct.unpack_from("<II", data, pos + 17)
        if compressed < 9 or pos + 16 + compressed > len(data):
            raise ClickHouseError(271, "compressed block size out of range")
        payload = data[pos + 25: pos + 16 + compressed]
        if method == 0x82:
            if lz4 is None:
                raise ClickHouseError(271, "the lz4 package is missing")
            out.append(lz4.block.decompress(payload, uncompressed_size=raw))
        elif method == 0x02:
            out.append(payload)
        else:
            raise ClickHouseError(271, "unsupported compression method 0x%02x" % method)
        pos += 16 + compressed
    return b"".join(out)


class Holds:
    """Test-only gates on queries whose text matches a pattern (see the module doc)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.next_id = 1
        self.active = {}  # id -> [compiled pattern, threading.Event, waiting count]

    def add(self, pattern):
        with self.lock:
            hid = self.next_id
            self.next_id += 1
            self.active[hid] = [re.compile(pattern, re.DOTALL), threading.Event(), 0]
            return hid

    def waiting(self, hid):
        with self.lock:
            h = self.active.get(hid)
            return h[2] if h else 0

    def release(self, hid):
        with self.lock:
            h = self.active.pop(hid, None)
        if h:
            h[1].set()

    def gate(self, sql):
        text = sql.decode("utf-8", "replace")
        with self.lock:
            hit = [h for h in self.active.values() if h[0].search(text)]
            for h in hit:
                h[2] += 1
        for h in hit:
            h[1].wait()
            with self.lock:
                h[2] -= 1


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "overwatch-chserver"

    def log_message(self, fmt, *args):  # quiet by default
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err):
        body = (str(err).rstrip() + "\n").encode()
        self._reply(500, body, [
            ("X-ClickHouse-Exception-Code", str(err.code)),
            ("Content-Type", "text/plain; charset=UTF-8"),
        ])

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ClickHouseError(241, "request body exceeds %d bytes" % MAX_BODY)
                parts.append(self.rfile.read(size))
                self.rfile.readline(16)
            body = b"".join(parts)
        else:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise ClickHouseError(241, "request body exceeds %d bytes" % MAX_BODY)
            body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if url.path in ("/ping", "/") and "query" not in params:
            self._reply(200, b"Ok.\n")
            return
        if url.path.startswith("/_overwatch/"):
            self._control(url, params, b"")
            return
        self._handle(url, params, b"")

    def _control(self, url, params, body):
        holds = self.server.holds
        hid = int(params.get("id", ["0"])[0] or 0)
        if url.path == "/_overwatch/hold":
            try:
                hid = holds.add(body.decode("utf-8"))
            except (re.error, UnicodeDecodeError) as err:
                self._error(ClickHouseError(36, "bad hold pattern: %s" % err))
                return
            self._reply(200, b"%d\n" % hid)
        elif url.path == "/_overwatch/held":
            self._reply(200, b"%d\n" % holds.waiting(hid))
        elif url.path == "/_overwatch/release":
            holds.release(hid)
            self._reply(200, b"Ok.\n")
        else:
            self._error(ClickHouseError(1002, "unknown control path %s" % url.path))

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        try:
            body = self._read_body()
            if url.path.startswith("/_overwatch/"):
                self._control(url, params, body)
                return
            if params.get("decompress", ["0"])[0] == "1":
                body = decompress_blocks(body)
        except ClickHouseError as err:
            self.close_connection = True
            self._error(err)
            return
        except (ValueError, OSError) as err:
            self.close_connection = True
            self._error(ClickHouseError(1002, "bad request body: %s" % err))
            return
        self._handle(url, params, body)

    def _handle(self, url, params, body):
        first = {k: v[0] for k, v in params.items()}
        query = first.get("query", "").encode()
        insert_data = None
        m = INSERT_FORMAT.match(query) if query and body else None
        if m:
            sql, insert_data = m.group(0), body
        elif not query:
            m = INSERT_FORMAT_INLINE.match(body)
            if m:
                sql, insert_data = m.group(1), body[m.end():]
        if insert_data is None:
            sql = query + b"\n" + body if query and body else query or body
        if not sql.strip():
            self._error(ClickHouseError(62, "Empty query"))
            return
        database = first.get("database") or self.headers.get("X-ClickHouse-Database")
        fmt = first.get("default_format") or self.headers.get("X-ClickHouse-Format") or "TabSeparated"
        settings = []
        for name, value in first.items():
            if name in PROTOCOL_PARAMS or name.startswith("param_"):
                continue
            if not SETTING_NAME.match(name):
                self._error(ClickHouseError(115, "Unknown setting %s" % name))
                return
            settings.append((name, value))
        self.server.holds.gate(sql)
        try:
            out = self.server.engine.run(sql, database, fmt, settings, insert_data)
        except ClickHouseError as err:
            self._error(err)
            return
        self._reply(200, out, [
            ("Content-Type", "application/octet-stream"),
            ("X-ClickHouse-Format", fmt),
        ])


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        """A client that went away before its answer (a timeout, a process
        stopping) is one line; anything else keeps its traceback. A failing
        run's log tail then shows the front's own notes, not pages of broken
        pipes."""
        err = sys.exc_info()[1]
        if isinstance(err, (BrokenPipeError, ConnectionResetError)):
            sys.stderr.write("chserver: client %s:%s left before its answer\n" % client_address[:2])
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--path", required=True, help="data directory of the embedded engine")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    engine = Engine(args.path)
    threading.Thread(target=engine.watch_kafka_consumers, daemon=True).start()
    server = Server((args.host, args.port), Handler)
    server.engine = engine
    server.holds = Holds()
    server.verbose = args.verbose

    def stop(_signo, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    print("chserver: listening on http://%s:%d (data %s)" % (host, port, args.path), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()
    print("chserver: stopped", flush=True)


if __name__ == "__main__":
    main()
