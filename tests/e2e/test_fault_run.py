"""Fault runs: a million simulated rows while the agent and the processor are each
SIGKILLed and restarted several times at random points. Bronze must hold exactly the
generated rows: the count, a checksum over every column, no sequence twice.

The kill schedule is random; its seed is printed and can be replayed with
SLUICE_FAULT_SEED=N."""

import os
import random
import time

import pyarrow.parquet as pq

from harness import Agent, Processor, checksum, duckdb_connection, pyiceberg_table, read_pyiceberg, \
    simulator_source

USER_COLUMNS = ["ts", "sample", "host", "region", "cpu", "mem", "load", "errors", "bytes", "ok"]
ROWS = 1_000_000


def kill_schedule(kills_each: int) -> tuple[int, list[tuple[str, float, float]]]:
    """(seed, [(victim, run for seconds, down for seconds)]) with each victim `kills_each` times."""
    seed = int(os.environ.get("SLUICE_FAULT_SEED", random.randrange(1 << 31)))
    rnd = random.Random(seed)
    victims = ["agent", "processor"] * kills_each
    rnd.shuffle(victims)
    return seed, [(v, rnd.uniform(0.8, 3.0), rnd.uniform(0.05, 1.0)) for v in victims]


def run_with_kills(agent: Agent, proc: Processor, schedule: list[tuple[str, float, float]]) -> None:
    """Start the agent, SIGKILL and restart the victims on schedule, and wait for the agent
    to finish its source; it must have resumed from its log after each of its kills."""
    agent.start()
    for victim, run_for, down_for in schedule:
        time.sleep(run_for)
        assert agent.proc.alive(), f"the run ended before the {victim} kill:\n{agent.proc.output()[-3000:]}"
        target = agent if victim == "agent" else proc
        target.proc.kill()
        time.sleep(down_for)
        target.start()
    assert agent.wait(600) == 0, agent.proc.output()[-5000:]
    log = agent.proc.output()
    kills = sum(1 for victim, _, _ in schedule if victim == "agent")
    assert log.count("agent starting") == kills + 1, f"{kills} agent restarts"
    assert "resuming the simulation" in log


def assert_exactly(proc: Processor, table: str, reference: list[dict], first_seq: int | None = 1) -> None:
    """The table holds exactly the reference rows, each once, with contiguous sequences
    (from `first_seq`; the Kafka sink numbers a new log from the clock)."""
    t = pyiceberg_table(proc, table)
    con = duckdb_connection()
    count, samples, seqs, min_seq, max_seq = con.execute(
        f"SELECT count(*), count(DISTINCT sample), count(DISTINCT _seq), min(_seq), max(_seq) "
        f"FROM iceberg_scan('{t.metadata_location}')").fetchone()
    assert count == len(reference), f"{len(reference) - count} rows lost" if count < len(reference) \
        else f"{count - len(reference)} rows too many"
    assert samples == count, f"{count - samples} rows duplicated"
    if first_seq is not None:
        assert min_seq == first_seq, f"sequences start at {min_seq}"
    assert seqs == max_seq - min_seq + 1, f"sequences not contiguous: {seqs} distinct in {min_seq}..{max_seq}"
    rows = read_pyiceberg(proc, table)
    assert checksum(rows, USER_COLUMNS) == checksum(reference, USER_COLUMNS)


def reference_rows(agent: Agent, source: str, workdir) -> list[dict]:
    out = workdir / "reference.parquet"
    agent.reference_file(source, out)
    return pq.read_table(out).to_pylist()


def test_fault_run_over_quic(bins, certs, workdir):
    seed, schedule = kill_schedule(kills_each=3)
    print(f"fault schedule (SLUICE_FAULT_SEED={seed}): {schedule}")
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(ROWS, rate=50_000)},
                  batch={"max_rows": 10_000, "max_age": "200ms"})
    try:
        run_with_kills(agent, proc, schedule)
        assert_exactly(proc, "bronze.telemetry", reference_rows(agent, "telemetry", workdir))
    finally:
        agent.proc and agent.proc.kill()
        proc.stop()
