#!/usr/bin/env python3
"""What the extra hop of migration 16 costs ClickHouse per consumed block.

Since migration 16 the Kafka table feeds one view into the Null table
``events_stream``, and the three consuming views read that table, instead of
reading the Kafka table directly. This inserts the same 65,536-row blocks
(400-byte properties, ten tenants) into both shapes in ClickHouse's engine
(chdb, as ``make test`` provisions it), alternating which goes first, and
prints the median time per block of each.

    $(OVERWATCH_CACHE)/venv/bin/python loadtest/viewhop.py [--rounds 12]
"""

import argparse
import tempfile
import time

from chdb import session

COLS = "id UUID, tenant_id UUID, ts Int64, props String, err String"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--rows", type=int, default=65536)
    args = ap.parse_args()
    s = session.Session(tempfile.mkdtemp(prefix="ow-viewhop-"))

    def q(sql):
        return s.query(sql, "TSV")

    q("CREATE DATABASE d ENGINE = Atomic")

    def three_views(source, p):
        q(f"CREATE TABLE d.{p}_ev ({COLS}) ENGINE = MergeTree ORDER BY (tenant_id, id)")
        q(f"CREATE TABLE d.{p}_dl ({COLS}) ENGINE = MergeTree ORDER BY id")
        q(f"CREATE TABLE d.{p}_us (tenant_id UUID, n UInt64) ENGINE = SummingMergeTree ORDER BY tenant_id")
        q(f"CREATE MATERIALIZED VIEW d.{p}_mv1 TO d.{p}_ev AS SELECT * FROM {source} WHERE length(err) = 0")
        q(f"CREATE MATERIALIZED VIEW d.{p}_mv2 TO d.{p}_dl AS SELECT * FROM {source} WHERE length(err) > 0")
        q(f"CREATE MATERIALIZED VIEW d.{p}_mv3 TO d.{p}_us AS SELECT tenant_id, count() AS n "
          f"FROM {source} WHERE length(err) = 0 GROUP BY tenant_id")

    # direct: three views on the source (migrations 9-15).
    q(f"CREATE TABLE d.direct_src ({COLS}) ENGINE = Null")
    three_views("d.direct_src", "direct")
    # stream: the source's one view into a Null table the three views read (16).
    q(f"CREATE TABLE d.stream_src ({COLS}) ENGINE = Null")
    q(f"CREATE TABLE d.stream_mid ({COLS}) ENGINE = Null")
    q("CREATE MATERIALIZED VIEW d.stream_fwd TO d.stream_mid AS SELECT * FROM d.stream_src")
    three_views("d.stream_mid", "stream")

    rows = (f"SELECT generateUUIDv4(), toUUID(concat('00000000-0000-0000-0000-00000000000', "
            f"toString(number % 10))), number, repeat('x', 400), '' FROM numbers({args.rows})")
    times = {"direct": [], "stream": []}
    for r in range(args.rounds):
        order = ["direct", "stream"] if r % 2 == 0 else ["stream", "direct"]
        for p in order:
            t = time.perf_counter()
            q(f"INSERT INTO d.{p}_src {rows}")
            times[p].append(time.perf_counter() - t)
    for p, ts in times.items():
        ts = sorted(ts)
        n = int(q(f"SELECT count() FROM d.{p}_ev").bytes())
        assert n == args.rows * args.rounds, (p, n)
        print("%-6s median %.1f ms per %d-row block (min %.1f, max %.1f)"
              % (p, 1000 * ts[len(ts) // 2], args.rows, 1000 * ts[0], 1000 * ts[-1]))


if __name__ == "__main__":
    main()
