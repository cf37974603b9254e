"""Compaction: many small commits bin-packed into few files as one `replace` snapshot,
read back identically by PyIceberg and DuckDB, history still readable, landing unharmed."""

import collections
import json
import time

from harness import (Agent, Processor, checksum, pyiceberg_table, read_duckdb, read_pyiceberg, simulator_source,
                     snapshot_marks)

COLUMNS = ["ts", "sample", "host", "region", "cpu", "mem", "load", "errors", "bytes", "ok"]


def land_in_small_files(bins, certs, workdir, n: int) -> Processor:
    """A processor whose bronze.telemetry holds `n` rows in many small commits."""
    proc = Processor(bins, certs, workdir, commit_interval="100ms").start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=20_000)},
                  batch={"max_rows": 500, "max_age": "50ms"}).start()
    assert agent.wait(180) == 0, agent.proc.output()
    return proc


def test_compaction_keeps_rows_and_history(bins, certs, workdir):
    n = 40_000
    proc = land_in_small_files(bins, certs, workdir, n)
    try:
        table = pyiceberg_table(proc, "bronze.telemetry")
        files_before = len(table.inspect.files())
        previous = table.current_snapshot()
        assert files_before >= 10, files_before
        before = read_pyiceberg(proc, "bronze.telemetry")
        want = checksum(before, COLUMNS + ["_agent", "_seq"])

        r = proc.cli("maintain", "compact", "--json")
        assert r.returncode == 0, r.stderr
        report = {x["table"]: x for x in json.loads(r.stdout)}["bronze.telemetry"]
        assert report["files_before"] == files_before
        assert report["files_after"] == 1 and report["files_written"] == 1
        assert report["rows_rewritten"] == n and report["conflicts"] == 0

        table = pyiceberg_table(proc, "bronze.telemetry")
        assert len(table.inspect.files()) == 1
        current = table.current_snapshot()
        assert current.summary.operation.value == "replace"
        assert int(current.summary["total-records"]) == n
        # The lander's progress marks are carried over, so it does not redeliver.
        assert current.summary["sluice.marks"] == previous.summary["sluice.marks"]
        assert snapshot_marks(table, current) == snapshot_marks(table, previous)
        assert snapshot_marks(table)["seq"]["edge-01"] >= 1
        for reader in (read_pyiceberg, read_duckdb):
            rows = reader(proc, "bronze.telemetry")
            assert len(rows) == n and checksum(rows, COLUMNS + ["_agent", "_seq"]) == want, reader.__name__
        # Older snapshots still read the old files.
        assert current.parent_snapshot_id == previous.snapshot_id
        assert len(table.scan(snapshot_id=previous.snapshot_id).to_arrow()) == n
        assert len(table.inspect.files()) < files_before

        # Nothing left to do: a second run is a no-op.
        r = proc.cli("maintain", "compact", "--table", "bronze.telemetry", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)[0]["files_rewritten"] == 0, r.stdout + r.stderr

        # Expire the history, then remove what nothing references any more.
        r = proc.cli("maintain", "expire", "--older-than", "0s", "--retain-last", "1", "--json")
        assert r.returncode == 0, r.stderr
        expired = json.loads(r.stdout)[0]
        assert expired["snapshots_after"] == 1 < expired["snapshots_before"], expired
        # Expiry removed what only the expired snapshots used: the compacted small files
        # among it, so orphan cleanup finds nothing left over.
        assert expired["files_removed"] >= files_before, expired
        assert len(list(proc.warehouse.rglob("*.parquet"))) == 1
        r = proc.cli("maintain", "orphans", "--older-than", "0s", "--json")
        assert r.returncode == 0, r.stderr
        orphans = json.loads(r.stdout)[0]
        assert orphans["deleted"] == 0, orphans
        for reader in (read_pyiceberg, read_duckdb):
            rows = reader(proc, "bronze.telemetry")
            assert len(rows) == n and checksum(rows, COLUMNS + ["_agent", "_seq"]) == want, reader.__name__
        # A safety window keeps young files.
        r = proc.cli("maintain", "orphans", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)[0]["deleted"] == 0, r.stdout

        # Landing continues on top of the compacted table, exactly once. An agent without
        # its data directory resumes from the checkpoint and mark the compaction carried
        # over: it lands only the 5,000 rows after them, numbered after the old ones.
        agent2 = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n + 5_000)},
                       data_dir=workdir / "fresh-agent-data").start()
        assert agent2.wait(180) == 0, agent2.proc.output()
        rows = read_pyiceberg(proc, "bronze.telemetry")
        assert len(rows) == n + 5_000
        old_seqs = {r["_seq"] for r in before}
        new_rows = [r for r in rows if r["_seq"] not in old_seqs]
        assert min(r["_seq"] for r in new_rows) == max(old_seqs) + 1
        assert sorted(r["sample"] for r in new_rows) == list(range(n + 1, n + 5_001))
    finally:
        proc.stop()


def test_landing_goes_on_during_compaction(bins, certs, workdir):
    """The lander keeps committing while compaction rewrites the same table; whichever
    commit loses the compare-and-swap retries on the new state; every row lands once."""
    n = 80_000
    proc = Processor(bins, certs, workdir, commit_interval="100ms").start()
    try:
        agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=10_000)},
                      batch={"max_rows": 500, "max_age": "50ms"}).start()
        agent.wait_api()
        deadline = time.time() + 60
        while agent.metrics().get('sluice_agent_acked_rows_total{stream="telemetry"}', 0) < 5_000:
            assert time.time() < deadline, agent.proc.output()
            time.sleep(0.1)
        runs = []
        deadline = time.time() + 120
        while agent.proc.alive() and time.time() < deadline:
            r = proc.cli("maintain", "compact", "--table", "bronze.telemetry", "--json")
            assert r.returncode == 0, r.stderr
            runs.append(json.loads(r.stdout)[0])
        assert agent.wait(60) == 0, agent.proc.output()
        assert sum(x["files_rewritten"] for x in runs) > 0, runs
        rows = read_pyiceberg(proc, "bronze.telemetry")
        assert len(rows) == n and len({r["sample"] for r in rows}) == n
        assert len(read_duckdb(proc, "bronze.telemetry")) == n
        m = proc.metrics()
        # Lost races show up as retried conflicts on either side, never as lost rows.
        conflicts = sum(x["conflicts"] for x in runs) + sum(
            v for k, v in m.items() if k.startswith("sluice_processor_commit_failures_total") and "conflict" in k)
        print(f"compaction runs: {len(runs)}, conflicts retried: {conflicts}")
    finally:
        proc.stop()


def test_compaction_by_copying_row_groups(bins, certs, workdir):
    """Bins of files with large row groups are merged without re-encoding: same rows, and
    metrics (counts, bounds) that let readers prune."""
    n = 40_000
    proc = land_in_small_files(bins, certs, workdir, n)
    try:
        table = pyiceberg_table(proc, "bronze.telemetry")
        files_before = table.inspect.files().to_pylist()
        assert len(files_before) >= 10
        want = checksum(read_pyiceberg(proc, "bronze.telemetry"), COLUMNS + ["_agent", "_seq"])

        r = proc.cli("maintain", "compact", "--copy-row-groups-above", "0B", "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)[0]
        assert report["bins_copied"] == 1 and report["bins_reencoded"] == 0, report
        assert report["files_after"] == 1 and report["rows_rewritten"] == n

        table = pyiceberg_table(proc, "bronze.telemetry")
        (merged,) = table.inspect.files().to_pylist()
        assert merged["record_count"] == n
        # Every row group of every input is in the merged file.
        assert len(merged["split_offsets"]) == len(files_before)
        for reader in (read_pyiceberg, read_duckdb):
            rows = reader(proc, "bronze.telemetry")
            assert len(rows) == n and checksum(rows, COLUMNS + ["_agent", "_seq"]) == want, reader.__name__
        # Counts and bounds are those of the inputs together.
        field = {f.name: f.field_id for f in table.schema().fields}
        sid = field["sample"]
        assert dict(merged["value_counts"])[sid] == n
        assert dict(merged["null_value_counts"])[sid] == 0
        # Bounds prune: a filter outside them reads nothing, one inside reads exactly.
        assert len(table.scan(row_filter=f"sample > {n + 1000}").to_arrow()) == 0
        assert len(table.scan(row_filter="sample <= 100").to_arrow()) == 100
    finally:
        proc.stop()


def test_scheduled_maintenance_beside_the_lander_and_a_model(bins, certs, workdir):
    """`serve` compacts and expires on its own schedule while an agent lands and a model
    reads bronze incrementally: the model's watermark keeps the snapshots it has yet to
    read, so it never loses its place, and every row is in silver exactly once."""
    n = 40_000
    sections = {
        "maintenance": {"interval": "1s", "expire_interval": "1s", "expire_older_than": "1s", "retain_last": 1,
                        "orphans_older_than": "10m"},
        "models": {"silver.telemetry": {"sql": "SELECT sample, host, cpu, _agent AS agent, _seq AS seq FROM telemetry",
                                        "max_files_per_run": 2}},
    }
    proc = Processor(bins, certs, workdir, sections=sections, commit_interval="100ms").start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=4_000)},
                  batch={"max_rows": 500, "max_age": "50ms"}).start()
    assert agent.wait(180) == 0, agent.proc.output()
    proc.wait_models(["silver.telemetry"])
    # The next maintenance passes compact what the last commits added, then expire the
    # snapshots that compaction left behind (each a second apart).
    def settled():
        t = pyiceberg_table(proc, "bronze.telemetry")
        return len(t.inspect.files()) == 1 and len(t.snapshots()) <= 3

    deadline = time.time() + 30
    while not settled() and time.time() < deadline:
        time.sleep(0.5)

    bronze = read_pyiceberg(proc, "bronze.telemetry")
    silver = read_pyiceberg(proc, "silver.telemetry")
    assert len(bronze) == n and len({r["sample"] for r in bronze}) == n
    keys = collections.Counter((r["agent"], r["seq"], r["sample"]) for r in silver)
    assert len(silver) == n and max(keys.values()) == 1
    assert set(keys) == {(r["_agent"], r["_seq"], r["sample"]) for r in bronze}

    m = proc.metrics()
    for task in ("compact", "expire"):
        assert m[f'sluice_processor_maintenance_runs_total{{table="bronze.telemetry",task="{task}",outcome="ok"}}'] >= 3
    assert not [k for k in m if k.startswith("sluice_processor_maintenance_runs_total") and 'outcome="ok"' not in k]
    assert m['sluice_processor_model_runs_total{model="silver.telemetry",outcome="ran"}'] >= 2
    assert m.get('sluice_processor_model_runs_total{model="silver.telemetry",outcome="error"}', 0) == 0
    table = pyiceberg_table(proc, "bronze.telemetry")
    assert len(table.inspect.files()) == 1, len(table.inspect.files())
    # Expiry ran (retain_last = 1): what is left is what the model has not read yet, at most.
    assert len(table.snapshots()) <= 3, [s.snapshot_id for s in table.snapshots()]
    # The lander lost no commit races to maintenance: it commits under the same lock.
    assert m['sluice_processor_commits_total{table="bronze.telemetry"}'] >= 1
    assert not [k for k in m if k.startswith("sluice_processor_commit_failures_total")], m
