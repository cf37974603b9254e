"""The processor's disk fills up mid-run: commits fail and are retried, nothing is
acknowledged meanwhile, both sides' `/ready` say why, and once space is back every row
lands exactly once.

Needs root (it mounts a small tmpfs), as CI and the development machines have."""

import pathlib
import subprocess
import time

from harness import Agent, Processor, checksum, pyiceberg_table, read_pyiceberg, simulator_source, wait_until

USER_COLUMNS = ["ts", "sample", "host", "region", "cpu", "mem", "load", "errors", "bytes", "ok"]
FAILED = 'sluice_processor_commit_failures_total{table="bronze.telemetry",reason="storage"}'
COMMITTED = 'sluice_processor_committed_rows_total{table="bronze.telemetry"}'


def test_full_disk_loses_nothing(bins, certs, workdir):
    disk = workdir / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    proc = agent = None
    try:
        n = 300_000  # ~11 MB of Parquet: far more than the 3 MB disk
        stalled = {"stalled_after": "2s"}
        proc = Processor(bins, certs, workdir, data_dir=disk / "data", api=stalled).start()
        agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=60_000)},
                      api=stalled).start()

        deadline = time.time() + 60
        while time.time() < deadline and proc.metrics().get(FAILED, 0) == 0:
            time.sleep(0.2)
        assert proc.metrics().get(FAILED, 0) > 0, "the disk never filled up:\n" + proc.proc.output()
        time.sleep(2)  # stay full for a while: retries keep failing, nothing is acked
        stuck = proc.metrics().get(COMMITTED, 0)
        assert stuck < n
        assert agent.proc.alive(), "the agent must wait for acks, not give up"
        assert "No space left on device" in proc.proc.output() or "disk is full" in proc.proc.output()
        assert proc.proc.alive()
        # Failed attempts remove what they half wrote: only committed files stay. (Polled a
        # few times: a retry may be writing at the instant we look.)
        table_data = disk / "data" / "warehouse" / "bronze" / "telemetry" / "data"
        committed_files = set()
        if stuck:
            committed_files = {pathlib.Path(t.file.file_path).name
                               for t in pyiceberg_table(proc, "bronze.telemetry").scan().plan_files()}
        for _ in range(10):
            on_disk = {p.name for p in table_data.rglob("*.parquet")}
            if on_disk == committed_files:
                break
            time.sleep(0.3)
        assert on_disk == committed_files, f"leftovers: {sorted(on_disk - committed_files)}"

        # Both sides say what is stuck: the processor's table, the agent's sink.
        status, body = wait_until(lambda: (r := proc.ready())[0] == 503 and r, 30, "the processor to turn not ready")
        assert "table bronze.telemetry stalled: " in body and "last error: commit failed" in body, body
        status, body = wait_until(lambda: (r := agent.ready())[0] == 503 and r, 30, "the agent to turn not ready")
        assert 'sink for stream "telemetry" stalled: ' in body, body

        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        wait_until(lambda: proc.ready()[0] == 200, 60, "the processor to be ready again")
        assert agent.wait(180) == 0, agent.proc.output()

        rows = read_pyiceberg(proc, "bronze.telemetry")
        assert len({r["sample"] for r in rows}) == len(rows), "duplicated rows"
        assert len(rows) == n, f"{n - len(rows)} rows lost"
        reference = agent.reference("telemetry", workdir / "reference.jsonl")
        assert checksum(rows, USER_COLUMNS) == checksum(reference, USER_COLUMNS)
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        if proc:
            proc.kill()
        subprocess.run(["umount", "-l", str(disk)], check=False)
