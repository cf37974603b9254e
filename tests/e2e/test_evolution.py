"""Tables that evolve: a stream that gains columns widens its table (old rows read null, time
travel shows the old schema), a batch of an incompatible type goes to quarantine and is
replayed exactly once after a config change, a strict stream quarantines new columns, and
bronze tables are partitioned by day of their event time."""

import json
import time

from harness import (Agent, Processor, duckdb_files_read, pyiceberg_table, read_duckdb,
                     read_pyiceberg, simulator_source, wait_until, write_toml)
from test_query_api import query

TABLE = "bronze.telemetry"


def fields(extra: dict | None = None) -> dict:
    """Three columns, and `extra` after them."""
    return {
        "ts": {"type": "timestamp"},
        "sample": {"type": "sequence", "start": 0},
        "cpu": {"type": "uniform", "min": 0.0, "max": 100.0},
        **(extra or {}),
    }


def source(total: int, extra: dict | None = None, **kw) -> dict:
    return {"telemetry": {
        "type": "simulator", "total": total, "seed": 3, "pace": "fast", "rate": 1000.0,
        "start_time": "2026-01-01T00:00:00Z", "fields": fields(extra), **kw,
    }}


def run_agent(bins, certs, workdir, proc, sources) -> Agent:
    agent = Agent(bins, certs, workdir, proc, sources).start()
    assert agent.wait(180) == 0, agent.proc.output()
    return agent


def test_a_stream_that_gains_columns_evolves_its_table_and_time_travel_shows_the_old_schema(
        bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    try:
        run_agent(bins, certs, workdir, proc, source(20_000))
        before = pyiceberg_table(proc, TABLE)
        old_snapshot = before.current_snapshot()
        assert [f.name for f in before.schema().fields][:3] == ["ts", "sample", "cpu"]

        # The connector is upgraded: the same stream, two more columns, one of them nested;
        # the agent resumes where its checkpoint says.
        extra = {
            "site": {"type": "choice", "values": ["berlin", "oslo"]},
            "position": {"type": "struct", "fields": {
                "x": {"type": "uniform", "min": 0.0, "max": 1.0},
                "floor": {"type": "poisson", "lambda": 2.0},
            }},
        }
        agent = run_agent(bins, certs, workdir, proc, source(40_000, extra))
        assert "quarantine" not in agent.proc.output(), "every batch fits once the table evolves"

        table = pyiceberg_table(proc, TABLE)
        names = [f.name for f in table.schema().fields]
        assert "site" in names and "position" in names, names
        assert proc.metrics()[f'sluice_processor_schema_changes_total{{table="{TABLE}"}}'] == 1
        for rows in (read_pyiceberg(proc, TABLE), read_duckdb(proc, TABLE)):
            assert sorted(r["sample"] for r in rows) == list(range(40_000)), "each row once"
            old = [r for r in rows if r["sample"] < 20_000]
            new = [r for r in rows if r["sample"] >= 20_000]
            assert all(r["site"] is None and r["position"] is None for r in old)
            assert all(r["site"] in ("berlin", "oslo") for r in new)
            assert all(0 <= r["position"]["x"] < 1 and r["position"]["floor"] >= 0 for r in new)

        # Time travel: the snapshot before the change has the old schema, to every reader.
        schema_then = table.schemas()[old_snapshot.schema_id]
        assert [f.name for f in schema_then.fields] == names[:3] + ["_agent", "_seq", "_ingested_at"]
        r = query(proc, f"SELECT * FROM {TABLE} LIMIT 1", snapshot=f"{TABLE}={old_snapshot.snapshot_id}")
        assert [c["name"] for c in r["columns"]] == [f.name for f in schema_then.fields], r["columns"]
        r = query(proc, f"SELECT count(*) AS n, count(site) AS s FROM {TABLE}")
        assert r["rows"] == [{"n": 40_000, "s": 20_000}]
    finally:
        proc.stop()


def test_an_incompatible_type_is_quarantined_and_replayed_exactly_once_after_a_config_change(
        bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    try:
        code_as_int = {"code": {"type": "uniform", "min": 0, "max": 99, "integer": True}}
        run_agent(bins, certs, workdir, proc, source(10_000, code_as_int))
        # The firmware now sends the code as text: these batches cannot land as they are.
        code_as_text = {"code": {"type": "choice", "values": ["17", "42"]}}
        agent = run_agent(bins, certs, workdir, proc, source(15_000, code_as_text))
        m = proc.metrics()
        assert m[f'sluice_processor_quarantined_rows_total{{table="{TABLE}",reason="type_change"}}'] == 5_000
        # The agent was acknowledged: it says so, and counts nothing lost.
        out = agent.proc.output()
        assert "batch kept in the processor's quarantine table" in out, out[-2000:]
        assert "batches_rejected=0" in out and "counted as lost" not in out, out[-2000:]
        kept = read_pyiceberg(proc, "quarantine.bronze_telemetry")
        assert sum(k["rows"] for k in kept) == 5_000
        assert all(k["agent"] == "edge-01" and "code" in k["reason"] for k in kept), kept[0]
        assert len(read_pyiceberg(proc, TABLE)) == 10_000

        listed = proc.cli("quarantine", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert sum(r["rows"] for r in json.loads(listed.stdout)) == 5_000

        # Replay under the same config: nothing fits, nothing lands, and it says so.
        r = proc.cli("quarantine", "replay", "--json")
        assert r.returncode != 0
        assert json.loads(r.stdout)[0]["replayed"] == 0

        # The operator lets text convert into the column, and replays: each row once.
        proc.stop()
        write_toml_append(proc, {"streams": {"telemetry": {"coerce": True}}})
        for attempt in range(2):
            r = proc.cli("quarantine", "replay", "--json")
            assert r.returncode == 0, r.stdout + r.stderr
            report = json.loads(r.stdout)[0]
            assert (report["replayed"], report["already"]) == ((len(kept), 0) if attempt == 0 else (0, len(kept)))
        rows = read_duckdb(proc, TABLE)
        assert sorted(r["sample"] for r in rows) == list(range(15_000))
        replayed = [r for r in rows if r["sample"] >= 10_000]
        assert {r["code"] for r in replayed} == {17, 42}
        assert {r["_agent"] for r in replayed} == {"edge-01/replay"}
    finally:
        proc.stop()


def test_a_strict_stream_quarantines_new_columns(bins, certs, workdir):
    proc = Processor(bins, certs, workdir, sections={"streams": {"telemetry": {"schema": "strict"}}}).start()
    try:
        run_agent(bins, certs, workdir, proc, source(5_000))
        run_agent(bins, certs, workdir, proc, source(8_000, {"site": {"type": "choice", "values": ["x"]}}))
        assert "site" not in [f.name for f in pyiceberg_table(proc, TABLE).schema().fields]
        assert len(read_pyiceberg(proc, TABLE)) == 5_000
        m = proc.metrics()
        assert m[f'sluice_processor_quarantined_rows_total{{table="{TABLE}",reason="strict_schema"}}'] == 3_000
        kept = read_pyiceberg(proc, "quarantine.bronze_telemetry")
        assert sum(k["rows"] for k in kept) == 3_000
        assert all("strict" in k["reason"] and "site" in k["reason"] for k in kept)
    finally:
        proc.stop()


def test_a_bronze_table_is_partitioned_by_day_and_moves_to_hours_with_every_row_readable(
        bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    try:
        # Two simulated days: 17,280 events, one every 10 s.
        two_days = source(17_280)
        two_days["telemetry"]["rate"] = 0.1
        run_agent(bins, certs, workdir, proc, two_days)
        table = pyiceberg_table(proc, TABLE)
        assert [f.transform.__class__.__name__ for f in table.spec().fields] == ["DayTransform"]
        files = list(table.scan().plan_files())
        days = {f.file.partition[0] for f in files}
        assert len(days) == 2, days
        # A time filter plans only the files of its day.
        from pyiceberg.expressions import GreaterThanOrEqual
        second_day = list(table.scan(row_filter=GreaterThanOrEqual("ts", "2026-01-02T00:00:00+00:00")).plan_files())
        assert 0 < len(second_day) < len(files)
        assert {f.file.partition[0] for f in second_day} == {max(days)}
        # DuckDB reads only those files too.
        assert duckdb_files_read(proc, TABLE, "ts >= TIMESTAMPTZ '2026-01-02 00:00:00+00'") == (
            8_640, len(second_day))
        # So does the query API: it opens the files of that day only.
        opened = 'sluice_processor_storage_data_files_opened_total'
        before_query = proc.metrics().get(opened, 0)
        n = query(proc, f"SELECT count(*) AS n FROM {TABLE} WHERE ts >= '2026-01-02T00:00:00Z'")
        assert n["rows"] == [{"n": 8_640}]
        assert proc.metrics()[opened] - before_query == len(second_day)
        before_query = proc.metrics()[opened]
        query(proc, f"SELECT count(*) AS n FROM {TABLE}")
        assert proc.metrics()[opened] - before_query == len(files)

        # Compaction keeps the partitions: one file per day.
        r = proc.cli("maintain", "compact")
        assert r.returncode == 0, r.stderr
        table = pyiceberg_table(proc, TABLE)
        files = list(table.scan().plan_files())
        assert len(files) == 2 and {f.file.partition[0] for f in files} == days

        # The spec moves to hours; old files keep theirs, new rows land hourly, all readable.
        proc.stop()
        write_toml_append(proc, {"streams": {"telemetry": {"partition": ["hour(ts)"]}}})
        proc.start()
        more = source(17_280 + 720)
        more["telemetry"]["rate"] = 0.1
        run_agent(bins, certs, workdir, proc, more)
        table = pyiceberg_table(proc, TABLE)
        assert [f.transform.__class__.__name__ for f in table.spec().fields] == ["HourTransform"]
        assert len(table.specs()) == 2
        for rows in (read_pyiceberg(proc, TABLE), read_duckdb(proc, TABLE)):
            assert sorted(r["sample"] for r in rows) == list(range(18_000))
        r = query(proc, f"SELECT count(*) AS n FROM {TABLE}")
        assert r["rows"] == [{"n": 18_000}]
    finally:
        proc.stop()


def write_toml_append(proc: Processor, doc: dict) -> None:
    """Append sections to the processor's config."""
    extra = proc.config.with_suffix(".extra.toml")
    write_toml(extra, doc)
    proc.config.write_text(proc.config.read_text() + "\n" + extra.read_text())


def test_two_processors_seeing_a_new_json_key_at_once_make_one_schema_change(bins, certs, workdir):
    from harness import Kafka
    from test_kafka import bronze_count

    kafka = Kafka(workdir)
    kafka.create_topic("readings", partitions=2)
    procs = []
    for name in ("p1", "p2"):
        (workdir / name).mkdir()
        procs.append(Processor(bins, certs, workdir / name, data_dir=workdir / "lake", sections={
            "kafka": {"brokers": kafka.brokers, "group": "evolve", "json": {"readings": {}}},
        }).start())
    try:
        def produce(partition: int, rows: list[dict]) -> None:
            r = kafka.kcat("-P", "-t", "readings", "-p", str(partition),
                           input=b"\n".join(json.dumps(x).encode() for x in rows) + b"\n")
            assert r.returncode == 0, r.stderr

        # Rows to both partitions until each processor has landed some: each holds one.
        committed = 'sluice_processor_committed_rows_total{table="bronze.readings"}'
        n = 0
        deadline = time.time() + 180
        while not all(p.metrics().get(committed, 0) > 0 for p in procs):
            assert time.time() < deadline, "both processors to hold a partition"
            for p in (0, 1):
                produce(p, [{"id": p * 1_000_000 + i, "v": i / 2} for i in range(n, n + 100)])
            n += 100
            time.sleep(0.5)
        wait_until(lambda: bronze_count(procs[0], "bronze.readings") >= 2 * n, 120, "the first rows to land")
        # Both partitions, one per processor, now carry a new key.
        for p in (0, 1):
            produce(p, [{"id": p * 1_000_000 + i, "v": i / 2, "site": f"s{p}"} for i in range(n, 2 * n)])
        wait_until(lambda: bronze_count(procs[0], "bronze.readings") >= 4 * n, 120, "the new rows to land")
        time.sleep(1)
        table = pyiceberg_table(procs[0], "bronze.readings")
        assert "site" in [f.name for f in table.schema().fields]
        assert len(table.schemas()) == 2, "one schema change"
        changes = sum(p.metrics().get('sluice_processor_schema_changes_total{table="bronze.readings"}', 0)
                      for p in procs)
        assert changes == 1
        rows = read_duckdb(procs[0], "bronze.readings")
        assert len(rows) == 4 * n and len({r["id"] for r in rows}) == 4 * n, "no row lost or twice"
        assert sum(1 for r in rows if r["site"] is not None) == 2 * n
    finally:
        for p in procs:
            p.stop()
