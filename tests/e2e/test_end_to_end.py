"""Agent → QUIC → processor → bronze, read back by PyIceberg and DuckDB."""

from harness import (Agent, Processor, checksum, pyiceberg_table, read_duckdb, read_pyiceberg,
                     simulator_source, snapshot_marks)

USER_COLUMNS = ["ts", "sample", "host", "region", "cpu", "mem", "load", "errors", "bytes", "ok"]


def test_rows_land_exactly_once_with_the_right_values(bins, certs, workdir):
    n = 60_000
    proc = Processor(bins, certs, workdir).start()
    try:
        agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n)}).start()
        assert agent.wait(180) == 0, agent.proc.output()
        reference = agent.reference("telemetry", workdir / "reference.jsonl")
        assert len(reference) == n

        want = checksum(reference, USER_COLUMNS)
        for reader in (read_pyiceberg, read_duckdb):
            rows = reader(proc, "bronze.telemetry")
            assert len(rows) == n, reader.__name__
            assert len({r["sample"] for r in rows}) == n, f"{reader.__name__}: duplicate rows"
            assert checksum(rows, USER_COLUMNS) == want, f"{reader.__name__}: values differ"
            assert {r["_agent"] for r in rows} == {"edge-01"}
            assert all(r["_ingested_at"] is not None for r in rows)

        # Spot-check values row by row, not only through the digest.
        by_sample = {r["sample"]: r for r in read_pyiceberg(proc, "bronze.telemetry")}
        for ref in reference[:: n // 50]:
            got = by_sample[ref["sample"]]
            assert got["cpu"] == ref["cpu"] and got["host"] == ref["host"] and got["ok"] == ref["ok"]

        # The progress token in the snapshot summary covers every batch the agent sent.
        table = pyiceberg_table(proc, "bronze.telemetry")
        summary = table.current_snapshot().summary
        seqs = {r["_seq"] for r in read_pyiceberg(proc, "bronze.telemetry")}
        assert snapshot_marks(table)["seq"]["edge-01"] == max(seqs)
        assert seqs == set(range(1, max(seqs) + 1))

        # Counters agree with the table.
        m = proc.metrics()
        assert m['sluice_processor_committed_rows_total{table="bronze.telemetry"}'] == n
    finally:
        proc.stop()


def test_restarted_agent_continues_after_the_lake(bins, certs, workdir):
    """A restarted agent continues its source where the last run stopped: from its
    write-ahead log's checkpoint, or from the lake's when the log is gone. Sequences stay
    contiguous and no row is generated twice."""
    proc = Processor(bins, certs, workdir).start()
    try:
        runs = [(10_000, "data-a"), (20_000, "data-a"), (30_000, "data-b")]
        for total, data in runs:
            agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(total, seed=1)},
                          data_dir=workdir / data).start()
            assert agent.wait(120) == 0, agent.proc.output()
            rows = read_pyiceberg(proc, "bronze.telemetry")
            samples = sorted(r["sample"] for r in rows)
            assert samples == list(range(1, total + 1)), f"run to {total}: {len(rows)} rows"
        assert "resuming the simulation" in agent.proc.output()
        seqs = sorted({r["_seq"] for r in rows})
        assert seqs == list(range(1, len(seqs) + 1))
        reference = agent.reference("telemetry", workdir / "reference.jsonl")
        assert checksum(rows, USER_COLUMNS) == checksum(reference, USER_COLUMNS)
    finally:
        proc.stop()


def test_two_agents_two_streams(bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    try:
        agents = [
            Agent(bins, certs, workdir, proc, {
                "cpu": simulator_source(8_000, seed=3),
                "mem": simulator_source(5_000, seed=4),
            }, agent_id=a).start()
            for a in ("edge-01", "edge-02")
        ]
        for a in agents:
            assert a.wait(120) == 0, a.proc.output()
        for table, n in (("bronze.cpu", 16_000), ("bronze.mem", 10_000)):
            rows = read_duckdb(proc, table)
            assert len(rows) == n
            assert {r["_agent"] for r in rows} == {"edge-01", "edge-02"}
            per_agent = {a: len({r["sample"] for r in rows if r["_agent"] == a}) for a in ("edge-01", "edge-02")}
            assert per_agent == {"edge-01": n // 2, "edge-02": n // 2}
    finally:
        proc.stop()
