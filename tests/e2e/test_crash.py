"""The processor is SIGKILLed and restarted mid-run: no row lost, none duplicated."""

import time

from harness import Agent, Processor, checksum, read_duckdb, read_pyiceberg, simulator_source

USER_COLUMNS = ["ts", "sample", "host", "region", "cpu", "mem", "load", "errors", "bytes", "ok"]


def test_processor_killed_and_restarted(bins, certs, workdir):
    n = 120_000
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        # ~8 s of data at 15,000 rows/s, so the kills land mid-stream.
        agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=15_000)}).start()
        for kill in range(2):
            # Kill only once this processor instance has committed something, mid-run.
            deadline = time.time() + 60
            committed = 0.0
            while time.time() < deadline and committed == 0:
                time.sleep(0.5)
                committed = proc.metrics().get('sluice_processor_committed_rows_total{table="bronze.telemetry"}', 0)
            assert 0 < committed < n, f"kill {kill} must happen mid-run (committed {committed})"
            time.sleep(0.3)
            proc.kill()
            time.sleep(0.7)  # the agent notices, retries with backoff and buffers meanwhile
            proc.start()
        assert agent.wait(180) == 0, agent.proc.output()

        reference = agent.reference("telemetry", workdir / "reference.jsonl")
        want = checksum(reference, USER_COLUMNS)
        for reader in (read_pyiceberg, read_duckdb):
            rows = reader(proc, "bronze.telemetry")
            samples = [r["sample"] for r in rows]
            assert len(samples) == len(set(samples)), f"{reader.__name__}: duplicated rows"
            assert len(rows) == n, f"{reader.__name__}: {n - len(rows)} rows lost"
            assert checksum(rows, USER_COLUMNS) == want
        # The restarted processor saw redeliveries and acknowledged them as duplicates or
        # re-landed what had not been committed; either way each sequence is in the table once.
        seqs = sorted({r["_seq"] for r in read_pyiceberg(proc, "bronze.telemetry")})
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()
