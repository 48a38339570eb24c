#!/usr/bin/env python3
"""Checks marketlane's DDL for current ClickHouse in-process with chdb (PyPI chdb-core, 26.x).

Usage: scripts/chdb-check.py DDL_FILE SCHEMAS_DIR
  DDL_FILE     output of `marketlane schema ddl --server-version 26.1.1 --database marketlane`
  SCHEMAS_DIR  the category schema files the DDL was generated from

It creates every table and view, inserts sample rows of every category, checks that the snapshot
tables hold the latest row per snapshot key (FINAL and argMax agree), that a batch repeated with
the same insert_deduplication_token is dropped (a replayed topic leaves the ingestion and
quarantine tables unchanged, counted without FINAL), and that the offsets table reads back.
Access statements (role, grants, user) are checked for syntax only (EXPLAIN AST): chdb's
embedded user has no access management. Exits 1 on the first failure.
"""
import pathlib
import sys
import tempfile
import time
import tomllib

from chdb import session

DB = "marketlane"


def statements(path):
    text = pathlib.Path(path).read_text()
    for stmt in text.split(";\n"):
        stmt = "\n".join(l for l in stmt.splitlines() if not l.startswith("--")).strip()
        if stmt:
            yield stmt


def fail(msg):
    print(f"chdb-check: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def q(s, sql):
    try:
        return str(s.query(sql, "TSV")).strip()
    except Exception as e:  # chdb raises its own error type
        fail(f"{e}\n  in: {sql[:400]}")


def literal(field, i, keys, t0):
    name, dtype = field["name"], field["dtype"]
    if dtype == "string":
        if field.get("allowed"):
            v = field["allowed"][i % len(field["allowed"])]
        elif name == "source_system_name":
            v = "chdb"
        else:
            v = f"{name}_{i % keys}"
        return "'" + v + "'"
    if dtype == "float64":
        return f"{i}.5"
    if dtype in ("int64",):
        return str(i)
    if dtype == "uint32":
        return str(i % keys + 1)
    if dtype == "timestamp":
        return f"fromUnixTimestamp64Nano(toInt64({t0 + i * 1000}))"
    fail(f"unknown dtype {dtype}")


def main():
    ddl, schemas_dir = sys.argv[1], sys.argv[2]
    s = session.Session(tempfile.mkdtemp(prefix="chdb-check-"))
    version = q(s, "SELECT version()")
    n = 0
    for stmt in statements(ddl):
        head = stmt.split(None, 2)[:2]
        if head[0] in ("GRANT",) or head[:2] in (["CREATE", "ROLE"], ["CREATE", "USER"]):
            q(s, f"EXPLAIN AST {stmt}")
        else:
            q(s, stmt)
        n += 1
    print(f"chdb-check: ClickHouse {version}: {n} DDL statements ok")

    t0 = time.time_ns()  # recent: the tables drop rows older than the TTL
    rows_per_batch, keys = 40, 6
    for path in sorted(pathlib.Path(schemas_dir).glob("*.toml")):
        schema = tomllib.loads(path.read_text())
        cat, fields = schema["category"], schema["field"]
        nullable = [f["name"] for f in fields if f.get("nullable")]
        cols = ["row_id"] + [f["name"] for f in fields] + [f"{c}_state" for c in nullable]

        def batch(lo, hi):
            rows = []
            for i in range(lo, hi):
                vals = [f"'{cat}-{i}'"] + [literal(f, i, keys, t0) for f in fields]
                vals += ["'ok'"] * len(nullable)
                rows.append("(" + ", ".join(vals) + ")")
            return ", ".join(rows)

        insert = f"INSERT INTO {DB}.{cat} ({', '.join(cols)})"
        # Two batches, as the writer cuts them, each sent twice (a replay of the whole topic).
        for replay in range(2):
            for lo in (0, rows_per_batch):
                hi = lo + rows_per_batch
                token = f"{cat}-0-{lo}-{hi - 1}"
                q(s, f"{insert} SETTINGS insert_deduplication_token = '{token}' VALUES {batch(lo, hi)}")
        total = 2 * rows_per_batch
        got = q(s, f"SELECT count() FROM {DB}.{cat}")
        if got != str(total):
            fail(f"{cat}: {got} rows without FINAL after a replayed batch, want {total}")
        got = q(s, f"SELECT count() FROM {DB}.{cat}_snapshot FINAL")
        key = schema["snapshot_key"]
        want = q(s, f"SELECT count() FROM (SELECT DISTINCT {', '.join(key)} FROM {DB}.{cat})")
        if got != want:
            fail(f"{cat}: snapshot has {got} keys, want {want}")
        final = q(s, f"SELECT row_id FROM {DB}.{cat}_snapshot FINAL ORDER BY row_id")
        argmax = q(
            s,
            f"SELECT argMax(row_id, snapshot_version) AS r FROM {DB}.{cat}_snapshot "
            f"GROUP BY {', '.join(key)} ORDER BY r",
        )
        latest = q(
            s,
            f"SELECT argMax(row_id, {schema['event_time']}) AS r FROM {DB}.{cat} "
            f"GROUP BY {', '.join(key)} ORDER BY r",
        )
        if not (final == argmax == latest):
            fail(f"{cat}: snapshot FINAL/argMax/latest disagree:\n{final}\n--\n{argmax}\n--\n{latest}")
        # The quarantine table deduplicates a replayed batch too.
        unq = (
            f"INSERT INTO {DB}.{cat}_unqualified (category, reason_code, reason, raw, raw_encoding, "
            f"source_system_name, component_instance_name, ingestion_time, source_topic, "
            f"source_partition, source_offset, quarantined_at) SETTINGS insert_deduplication_token "
            f"= '{cat}_unqualified-0-0-0' VALUES ('{cat}', 'not_json', 'x', '{{', 'utf8', 's', 'c', "
            f"now64(9), '{cat}', 0, 0, now64(9))"
        )
        q(s, unq)
        q(s, unq)
        if q(s, f"SELECT count() FROM {DB}.{cat}_unqualified") != "1":
            fail(f"{cat}_unqualified: a replayed quarantine batch was not dropped")
        print(f"chdb-check: {cat}: dedup token, snapshot (FINAL = argMax = latest) ok")

    q(s, f"INSERT INTO {DB}_state.writer_offsets VALUES ('t', 0, 0, 9, 'before', 1), ('t', 0, 0, 9, 'after', 2)")
    got = q(s, f"SELECT argMax(max_offset, seq), toString(argMax(phase, seq)) FROM {DB}_state.writer_offsets GROUP BY topic, partition")
    if got != "9\tafter":
        fail(f"offsets table reads back {got!r}")
    print("chdb-check: offsets table ok")


if __name__ == "__main__":
    main()
