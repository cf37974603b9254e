"""The agent's write-ahead log: a processor that is away for a while, a log that reaches
its cap (each policy), and a disk that fills up under the agent."""

import subprocess
import time

import pytest

from harness import Agent, Processor, checksum, read_pyiceberg, rss_bytes, simulator_source, wait_until

USER_COLUMNS = ["ts", "sample", "host", "region", "cpu", "mem", "load", "errors", "bytes", "ok"]
COMMITTED = 'sluice_processor_committed_rows_total{table="bronze.telemetry"}'
WAL_SIZE = 'sluice_agent_wal_size_bytes{stream="telemetry"}'
SOURCE_ROWS = 'sluice_agent_source_rows_total{source="telemetry"}'
LOST_FULL = 'sluice_agent_lost_rows_total{stream="telemetry",reason="wal_full"}'
WRITE_ERRORS = 'sluice_agent_wal_write_errors_total{stream="telemetry"}'


def check_all_landed(proc, agent, workdir, n):
    rows = read_pyiceberg(proc, "bronze.telemetry")
    samples = [r["sample"] for r in rows]
    assert len(samples) == len(set(samples)), "duplicated rows"
    assert len(rows) == n, f"{n - len(rows)} rows lost"
    reference = agent.reference("telemetry", workdir / "reference.jsonl")
    assert checksum(rows, USER_COLUMNS) == checksum(reference, USER_COLUMNS)


def first_commit(proc):
    wait_until(lambda: proc.metrics().get(COMMITTED, 0) > 0, 60, "a first commit")


def test_processor_away_agent_buffers_to_disk_with_bounded_memory(bins, certs, workdir):
    n = 1_000_000
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=60_000)},
                  batch={"max_rows": 10_000, "max_age": "200ms"}).start()
    try:
        agent.wait_api()
        first_commit(proc)
        proc.kill()
        # Away for a while: the agent keeps generating, into its log on disk. Its memory
        # fills with one window of unacknowledged batches, then stays flat however much the
        # log holds.
        time.sleep(3)
        before = agent.metrics()
        rss_start = rss_max = rss_bytes(agent.proc)
        for _ in range(28):
            time.sleep(0.25)
            rss_max = max(rss_max, rss_bytes(agent.proc))
        during = agent.metrics()
        generated = during[SOURCE_ROWS] - before[SOURCE_ROWS]
        buffered = during[WAL_SIZE] - before[WAL_SIZE]
        assert generated > 250_000, f"the source went on while the processor was away ({generated} rows)"
        assert buffered > 25 << 20, f"the log grew by {buffered} bytes"
        assert during['sluice_agent_inflight_batches{stream="telemetry"}'] <= 16
        assert rss_max - rss_start < 12 << 20, \
            f"resident memory grew {rss_max - rss_start} bytes while the log grew {buffered}"
        proc.start()
        assert agent.wait(300) == 0, agent.proc.output()[-3000:]
        check_all_landed(proc, agent, workdir, n)
    finally:
        agent.proc.kill()
        proc.stop()


@pytest.mark.parametrize("policy", ["block", "drop_oldest"])
def test_log_cap_policy(bins, certs, workdir, policy):
    n = 400_000
    cap = 4 << 20
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=80_000)},
                  batch={"max_rows": 5_000, "max_bytes": "512KiB", "max_age": "100ms"},
                  buffer={"max_size": "4MiB", "segment_size": "256KiB", "when_full": policy}).start()
    try:
        agent.wait_api()
        first_commit(proc)
        proc.kill()
        if policy == "block":
            # The log fills to its cap, then the source is held back.
            wait_until(lambda: agent.metrics().get(WAL_SIZE, 0) > cap - (1 << 20), 60, "the log to fill")
            time.sleep(1.0)
            held = agent.metrics()[SOURCE_ROWS]
            time.sleep(2.0)
            m = agent.metrics()
            assert m[SOURCE_ROWS] == held, "sources must wait while the log is full"
            assert m.get(LOST_FULL, 0) == 0
        else:
            wait_until(lambda: agent.metrics().get(LOST_FULL, 0) > 0, 60, "the log to drop its oldest rows")
            m = agent.metrics()
            assert "write-ahead log is full" in agent.proc.output()
        assert m[WAL_SIZE] <= cap, m[WAL_SIZE]
        proc.start()
        assert agent.wait(300) == 0, agent.proc.output()[-3000:]
        if policy == "block":
            check_all_landed(proc, agent, workdir, n)
        else:
            rows = read_pyiceberg(proc, "bronze.telemetry")
            samples = [r["sample"] for r in rows]
            assert len(samples) == len(set(samples)), "duplicated rows"
            # Every row either landed or is counted lost: none vanishes unaccounted.
            out = agent.proc.output()
            dropped = sum(int(line.split("rows=")[1].split()[0]) for line in out.splitlines()
                          if "dropped its oldest segment" in line and "rows=" in line)
            assert dropped > 0
            assert len(rows) + dropped == n, f"{len(rows)} landed + {dropped} dropped != {n}"
    finally:
        agent.proc.kill()
        proc.stop()


def test_agent_disk_full_holds_sources_back_and_loses_nothing(bins, certs, workdir):
    """Root only (mounts a small tmpfs for the agent's data directory)."""
    disk = workdir / "agent-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    n = 300_000
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=60_000)},
                      batch={"max_rows": 5_000, "max_bytes": "512KiB", "max_age": "100ms"},
                      buffer={"max_size": "64MiB", "segment_size": "256KiB"},
                      data_dir=disk).start()
        agent.wait_api()
        first_commit(proc)
        proc.kill()
        wait_until(lambda: agent.metrics().get(WRITE_ERRORS, 0) > 0, 60, "the agent's disk to fill up")
        assert "No space left on device" in agent.proc.output()
        # Segments acknowledged before the processor died can still be reclaimed and take a
        # few more batches (the disk may fill before the kill); then the sources wait: over
        # 1.5 s they produce next to nothing (60,000 rows/s otherwise), far from done.
        def held_back():
            before = agent.metrics()[SOURCE_ROWS]
            time.sleep(1.5)
            after = agent.metrics()[SOURCE_ROWS]
            return after - before <= 20_000 and after
        held = wait_until(held_back, 30, "the sources to wait while nothing can be stored")
        assert held < n / 2, f"{held:.0f} of {n} rows produced with the disk full"
        assert agent.proc.alive()
        # The processor comes back: acks free segments, the log takes batches again.
        proc.start()
        assert agent.wait(300) == 0, agent.proc.output()[-3000:]
        check_all_landed(proc, agent, workdir, n)
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
