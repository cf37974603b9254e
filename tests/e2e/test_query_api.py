"""The processor's query API and CLI: SQL as JSON or CSV, table stats, time travel; checked
against PyIceberg reading the same tables."""

import csv
import io
import json
import urllib.parse

from harness import Agent, Processor, http_request, pyiceberg_table, read_pyiceberg, simulator_source


def call(proc: Processor, path: str, params: dict | None = None, body: dict | None = None, **kw):
    """GET `path` with `params`, or POST `body` as JSON; `kw` as for `http_request`."""
    if params:
        path += "?" + urllib.parse.urlencode(params)
    if body is not None:
        kw.setdefault("method", "POST")
        kw["body"] = json.dumps(body).encode()
        kw["headers"] = {"Content-Type": "application/json", **kw.get("headers", {})}
    status, headers, text = http_request(proc.api_port, path, **kw)
    return status, headers.get("Content-Type", ""), text


def query(proc, sql, **params):
    status, _, body = call(proc, "/api/query", {"sql": sql, **params})
    assert status == 200, body
    return json.loads(body)


def test_query_api_tables_and_time_travel(bins, certs, workdir):
    n = 30_000
    proc = Processor(bins, certs, workdir).start()
    try:
        # Paced, so the lander makes several commits (snapshots) along the way.
        agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=15_000)}).start()
        assert agent.wait(180) == 0, agent.proc.output()
        rows = read_pyiceberg(proc, "bronze.telemetry")
        table = pyiceberg_table(proc, "bronze.telemetry")

        # /api/tables agrees with the table's own metadata.
        status, ctype, body = call(proc, "/api/tables")
        assert status == 200 and ctype.startswith("application/json"), body
        stats = {t["table"]: t for t in json.loads(body)["tables"]}
        t = stats["bronze.telemetry"]
        snapshots = list(table.snapshots())
        assert t["rows"] == n and t["snapshots"] == len(snapshots) >= 2, t
        assert t["data_files"] == len(table.inspect.files()) and t["bytes"] > 0
        assert t["current_snapshot_id"] == table.current_snapshot().snapshot_id
        assert t["last_commit_ms"] == table.current_snapshot().timestamp_ms

        # JSON results equal an independent computation.
        r = query(proc, "SELECT count(*) AS n, sum(bytes) AS b, count(DISTINCT host) AS hosts FROM bronze.telemetry")
        assert r["columns"][0] == {"name": "n", "type": "Int64"}
        assert r["rows"] == [{"n": n, "b": sum(x["bytes"] for x in rows), "hosts": len({x["host"] for x in rows})}]
        assert r["row_count"] == 1 and r["truncated"] is False

        # CSV, and the row limit.
        status, ctype, body = call(proc, "/api/query", {
            "sql": "SELECT sample, region FROM bronze.telemetry ORDER BY sample", "format": "csv", "limit": 25})
        assert status == 200 and ctype.startswith("text/csv"), body
        parsed = list(csv.DictReader(io.StringIO(body)))
        by_sample = {x["sample"]: x for x in rows}
        assert [int(p["sample"]) for p in parsed] == sorted(by_sample)[:25]
        assert all(p["region"] == by_sample[int(p["sample"])]["region"] for p in parsed)
        r = query(proc, "SELECT * FROM bronze.telemetry", limit=10)
        assert r["row_count"] == 10 and r["truncated"] is True

        # POST: the body is JSON.
        status, _, body = call(proc, "/api/query", body={"sql": "SELECT count(*) AS n FROM bronze.telemetry"})
        assert status == 200 and json.loads(body)["rows"] == [{"n": n}], body

        # Time travel: as of the first commit, or pinned to a snapshot, or before the table.
        first = min(snapshots, key=lambda s: s.timestamp_ms)
        first_rows = int(first.summary["total-records"])
        assert 0 < first_rows < n
        r = query(proc, "SELECT count(*) AS n FROM bronze.telemetry", as_of=str(first.timestamp_ms))
        assert r["rows"] == [{"n": first_rows}]
        r = query(proc, "SELECT count(*) AS n FROM bronze.telemetry",
                  snapshot=f"bronze.telemetry={first.snapshot_id}")
        assert r["rows"] == [{"n": first_rows}]
        r = query(proc, "SELECT count(*) AS n FROM bronze.telemetry", as_of="1970-01-01T00:00:00Z")
        assert r["rows"] == [{"n": 0}]

        # Errors are 400s that say what is wrong.
        for params, words in [
            ({"sql": "SELEC 1"}, "SELEC"),
            ({"sql": "SELECT * FROM bronze.nope"}, "nope"),
            ({"sql": "SELECT 1", "format": "xml"}, "format"),
            ({"sql": "SELECT 1", "as_of": "yesterday"}, "as_of"),
            ({"sql": "SELECT 1", "snapshot": "bronze.telemetry=42"}, "no snapshot 42"),
            ({"sql": "SELECT 1", "limit": 0}, "limit"),
            ({}, "no SQL"),
        ]:
            status, _, body = call(proc, "/api/query", params)
            assert status == 400 and words in json.loads(body)["error"], (params, body)

        # Statements that write are refused (403, with the reason), and change nothing: no
        # file written, no forged row, no table dropped; over the CLI too.
        target = workdir / "pwned.csv"
        for sql in [
            f"COPY (SELECT 'pwned' AS x) TO '{target}' STORED AS CSV",
            "INSERT INTO bronze.telemetry (host, _agent, _seq) VALUES ('evil', 'edge-01', 999999)",
            "DROP TABLE bronze.telemetry",
            f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}' STORED AS CSV",
        ]:
            status, _, body = call(proc, "/api/query", body={"sql": sql})
            assert status == 403 and "only reads are allowed" in json.loads(body)["error"], (sql, body)
        out = proc.cli("query", f"COPY (SELECT 1) TO '{target}' STORED AS CSV", timeout=60)
        assert out.returncode != 0 and "only reads are allowed" in out.stderr, out.stderr
        assert not target.exists()
        assert query(proc, "SELECT count(*) AS n FROM bronze.telemetry")["rows"] == [{"n": n}]

        # The CLI reads the same way.
        out = proc.cli("query", "--format", "json", "--as-of", first.timestamp_ms,
                       "SELECT count(*) AS n FROM bronze.telemetry", timeout=60)
        assert out.returncode == 0 and json.loads(out.stdout) == [{"n": first_rows}], out.stderr
        out = proc.cli("tables", "--json", timeout=60)
        assert out.returncode == 0, out.stderr
        assert {x["table"]: x["rows"] for x in json.loads(out.stdout)}["bronze.telemetry"] == n
    finally:
        proc.stop()
