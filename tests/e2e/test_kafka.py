"""The Kafka path: agents produce to a real broker (tansu), processors in one consumer group
land the topics in bronze exactly once, whatever is killed; Debian's kcat reads what the
agent wrote and writes plain JSON topics the processor lands too."""

import json
import random
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from harness import Agent, Kafka, Processor, canonical, duckdb_connection, pyiceberg_table, read_pyiceberg, \
    simulator_source, snapshot_marks, wait_until
from test_fault_run import ROWS, assert_exactly, kill_schedule, reference_rows, run_with_kills

TOPIC = "sluice.telemetry"


def kafka_sink(kafka: Kafka, **extra) -> dict:
    return {"type": "kafka", "brokers": kafka.brokers, **extra}


def kafka_processor(bins, certs, workdir, kafka: Kafka, **kw) -> Processor:
    return Processor(bins, certs, workdir, sections={"kafka": {"brokers": kafka.brokers, "topics": [TOPIC]}}, **kw)


def bronze_count(proc: Processor, table: str) -> int:
    try:
        t = pyiceberg_table(proc, table)
    except Exception:  # not created yet
        return 0
    if t.current_snapshot() is None:
        return 0
    return duckdb_connection().execute(f"SELECT count(*) FROM iceberg_scan('{t.metadata_location}')").fetchone()[0]


def kafka_marks(proc: Processor, table: str) -> dict[int, int]:
    return snapshot_marks(pyiceberg_table(proc, table))["kafka"].get(TOPIC, {})


def test_kafka_lands_exactly_once_and_kcat_reads_the_topic(bins, certs, workdir):
    kafka = Kafka(workdir)
    kafka.create_topic(TOPIC, partitions=3)
    proc = kafka_processor(bins, certs, workdir, kafka).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(100_000)},
                  sink=kafka_sink(kafka, compression="zstd"), batch={"max_rows": 10_000, "max_age": "200ms"})
    agent.start()
    assert agent.wait(120) == 0, agent.proc.output()[-3000:]
    wait_until(lambda: bronze_count(proc, "bronze.telemetry") >= 100_000, 120, "bronze to hold every row")
    assert_exactly(proc, "bronze.telemetry", reference_rows(agent, "telemetry", workdir), first_seq=None)

    # kcat sees one message per batch, keyed by the agent, the envelope in its headers.
    r = kafka.kcat("-C", "-t", TOPIC, "-e", "-f", "%p|%o|%k|%h\\n")
    assert r.returncode == 0, r.stderr
    messages = [line.split("|", 3) for line in r.stdout.decode().splitlines() if line]
    assert messages, r.stderr
    assert {m[2] for m in messages} == {"edge-01"}
    partitions = {int(m[0]) for m in messages}
    assert len(partitions) == 1, "one agent's batches stay in one partition"
    headers = [dict(h.split("=", 1) for h in m[3].split(",") if "=" in h) for m in messages]
    assert all(h["sluice-agent"] == "edge-01" and h["sluice-stream"] == "telemetry" for h in headers)
    assert sum(int(h["sluice-rows"]) for h in headers) == 100_000
    seqs = [int(h["sluice-seq"]) for h in headers]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # The table records where each partition is landed up to: the end of the agent's
    # partition, and the start of the empty ones.
    (p,) = partitions
    last_offset = max(int(m[1]) for m in messages)
    wait_until(lambda: kafka_marks(proc, "bronze.telemetry").get(p) == last_offset + 1, 30,
               f"the mark of partition {p} to reach {last_offset + 1}")

    # A restarted processor starts from those marks and lands nothing twice.
    proc.stop()
    proc.start()
    wait_until(lambda: "assigned Kafka partitions" in proc.proc.output().split("processor ready")[-1], 60,
               "the restarted processor to be assigned the partitions")
    assert f'(("{TOPIC}", {p}), Some({last_offset + 1}))' in proc.proc.output()
    time.sleep(2)
    assert proc.metrics().get('sluice_processor_kafka_messages_total{topic="%s"}' % TOPIC, 0) == 0
    assert bronze_count(proc, "bronze.telemetry") == 100_000


def test_fault_run_over_kafka(bins, certs, workdir):
    seed, schedule = kill_schedule(kills_each=3)
    print(f"fault schedule (SLUICE_FAULT_SEED={seed}): {schedule}")
    kafka = Kafka(workdir)
    kafka.create_topic(TOPIC, partitions=2)
    proc = kafka_processor(bins, certs, workdir, kafka).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(ROWS, rate=50_000)},
                  sink=kafka_sink(kafka), batch={"max_rows": 10_000, "max_age": "200ms"})
    try:
        run_with_kills(agent, proc, schedule)
        wait_until(lambda: bronze_count(proc, "bronze.telemetry") >= ROWS, 300, "bronze to hold every row")
        time.sleep(2)  # anything landed twice would show up now
        assert_exactly(proc, "bronze.telemetry", reference_rows(agent, "telemetry", workdir), first_seq=None)
    finally:
        agent.proc and agent.proc.kill()
        proc.stop()


def test_broker_down_then_back(bins, certs, workdir):
    """The broker is away for a while: the agent keeps its batches in its log (memory stays
    flat), both sides' `/ready` say what is stuck, and everything lands once the broker is
    back."""
    kafka = Kafka(workdir)
    kafka.create_topic(TOPIC, partitions=1)
    stalled = {"stalled_after": "2s"}
    proc = kafka_processor(bins, certs, workdir, kafka, api=stalled).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(400_000, rate=40_000)},
                  sink=kafka_sink(kafka), batch={"max_rows": 10_000, "max_age": "200ms"}, api=stalled).start().wait_api()
    wait_until(lambda: bronze_count(proc, "bronze.telemetry") > 0, 60, "the first rows to land")
    kafka.kill()
    wal = 'sluice_agent_wal_size_bytes{stream="telemetry"}'
    before = agent.metrics().get(wal, 0)
    _, body = wait_until(lambda: (r := agent.ready())[0] == 503 and r, 30, "the agent to turn not ready")
    assert 'sink for stream "telemetry" stalled: ' in body, body
    _, body = wait_until(lambda: (r := proc.ready())[0] == 503 and r, 30, "the processor to turn not ready")
    assert "kafka consumer stalled: failing for" in body, body
    time.sleep(3)  # away a while longer: the log keeps growing
    during = agent.metrics()
    assert during.get(wal, 0) > before + 5_000_000, f"the log grows while the broker is away: {before} -> {during.get(wal)}"
    kafka.start()
    wait_until(lambda: proc.ready()[0] == 200, 60, "the processor to be ready again")
    assert agent.wait(180) == 0, agent.proc.output()[-3000:]
    assert "Kafka producer restarting" in agent.proc.output() or "Connection refused" in agent.proc.output()
    wait_until(lambda: bronze_count(proc, "bronze.telemetry") >= 400_000, 120, "bronze to hold every row")
    assert_exactly(proc, "bronze.telemetry", reference_rows(agent, "telemetry", workdir), first_seq=None)


def agents_on_both_partitions(partitions: int) -> list[str]:
    """Agent ids whose keys land on different partitions (librdkafka hashes keys with CRC-32)."""
    ids, seen = [], set()
    for n in range(1, 100):
        agent_id = f"edge-{n:02d}"
        p = zlib.crc32(agent_id.encode()) % partitions
        if p not in seen:
            seen.add(p)
            ids.append(agent_id)
        if len(ids) == partitions:
            return ids
    raise AssertionError("no spread of agent ids")


def test_two_processors_in_one_group(bins, certs, workdir):
    """Two processors share the partitions and commit to the same table (conflicts are
    retried on the table's new state). One is SIGKILLed while both are landing: the other
    takes its partition over from the table's marks. Every row lands once."""
    kafka = Kafka(workdir)
    kafka.create_topic(TOPIC, partitions=2)
    first_dir, second_dir = workdir / "p1", workdir / "p2"
    first_dir.mkdir()
    second_dir.mkdir()
    p1 = kafka_processor(bins, certs, first_dir, kafka, data_dir=workdir / "lake").start()
    p2 = kafka_processor(bins, certs, second_dir, kafka, data_dir=workdir / "lake").start()
    rows = 300_000
    agents = [Agent(bins, certs, workdir, p1, {"telemetry": simulator_source(rows, rate=20_000, seed=n)},
                    agent_id=agent_id, sink=kafka_sink(kafka), batch={"max_rows": 5_000, "max_age": "200ms"}).start()
              for n, agent_id in enumerate(agents_on_both_partitions(2), start=1)]
    # Each processor landed one agent's partition: both commit to the table.
    committed = 'sluice_processor_committed_rows_total{table="bronze.telemetry"}'
    wait_until(lambda: p1.metrics().get(committed, 0) > 0 and p2.metrics().get(committed, 0) > 0, 60,
               "both processors to commit")
    # Mid-run, with batches of its partition read and not yet committed.
    assigned = 'sluice_processor_kafka_rebalances_total{kind="assign"}'
    assigned_before = p1.metrics()[assigned]
    p2.kill()
    for a in agents:
        assert a.wait(180) == 0, a.proc.output()[-3000:]
    total = rows * len(agents)
    wait_until(lambda: bronze_count(p1, "bronze.telemetry") >= total, 180,
               "the surviving processor to land the killed one's partition too")
    time.sleep(2)
    con = duckdb_connection()
    t = pyiceberg_table(p1, "bronze.telemetry")
    count, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT (_agent, sample)) FROM iceberg_scan('{t.metadata_location}')").fetchone()
    assert (count, distinct) == (total, total), f"{count} rows, {distinct} distinct, {total} expected"
    assert p1.metrics()[assigned] > assigned_before, "p1 was assigned partitions again after the kill"


def test_json_topics_fed_by_kcat_and_dead_letters(bins, certs, workdir):
    """Plain JSON topics written by kcat land in bronze: declared columns, and columns
    inferred from the first message; what does not parse lands in the dead-letter table
    with its raw bytes and the reason. A restarted processor lands nothing twice."""
    kafka = Kafka(workdir)
    kafka.create_topic("app.logs", partitions=2)
    kafka.create_topic("clicks", partitions=1)
    proc = Processor(bins, certs, workdir, sections={"kafka": {
        "brokers": kafka.brokers,
        "json": {
            "app.logs": {"schema": {"ts": "timestamp", "level": "string", "ms": "double", "status": "long"}},
            "clicks": {},
        },
    }}).start()
    good = [{"ts": f"2026-03-01T12:00:{i % 60:02d}Z", "level": ["info", "warn", "error"][i % 3], "ms": i / 4,
             "status": 200 + i % 5} for i in range(300)]
    bad = [b"not json at all", b'{"ms": "slow"}', b"[1, 2, 3]"]
    lines = [json.dumps(r).encode() for r in good[:150]] + bad + [json.dumps(r).encode() for r in good[150:]]
    r = kafka.kcat("-P", "-t", "app.logs", input=b"\n".join(lines) + b"\n")
    assert r.returncode == 0, r.stderr
    clicks = [b'{"user": "a", "n": 1, "tags": ["x"]}', b'{"user": "b", "n": 2}', b'{"user": "c", "n": 2.5}']
    r = kafka.kcat("-P", "-t", "clicks", input=b"\n".join(clicks) + b"\n")
    assert r.returncode == 0, r.stderr

    wait_until(lambda: bronze_count(proc, "bronze.app_logs") >= len(good), 120, "the JSON rows to land")
    wait_until(lambda: bronze_count(proc, "bronze.dead_letters") >= len(bad) + 1, 60, "the dead letters to land")
    time.sleep(1)
    rows = read_pyiceberg(proc, "bronze.app_logs")
    assert len(rows) == len(good)
    got = sorted((canonical(r["ts"]), r["level"], r["ms"], r["status"]) for r in rows)
    want = sorted((canonical(r["ts"]), r["level"], r["ms"], r["status"]) for r in good)
    assert got == want

    inferred = read_pyiceberg(proc, "bronze.clicks")
    assert sorted((r["user"], r["n"]) for r in inferred) == [("a", 1), ("b", 2)]
    assert "tags" not in inferred[0], "a list is left out of inferred columns"

    letters = read_pyiceberg(proc, "bronze.dead_letters")
    assert sorted(r["value"] for r in letters) == sorted(bad + [clicks[2]])
    by_value = {r["value"]: r for r in letters}
    assert "not JSON" in by_value[b"not json at all"]["reason"]
    assert "not a JSON object" in by_value[b"[1, 2, 3]"]["reason"]
    assert "does not fit" in by_value[b'{"ms": "slow"}']["reason"]
    assert {r["topic"] for r in letters} == {"app.logs", "clicks"}
    assert by_value[clicks[2]]["offset"] == 2
    m = proc.metrics()
    assert m['sluice_processor_kafka_dead_letters_total{topic="app.logs"}'] == len(bad)

    # Restarted: it starts after what the tables hold and lands nothing again.
    proc.stop()
    proc.start()
    wait_until(lambda: "assigned Kafka partitions" in proc.proc.output().split("processor ready")[-1], 60,
               "the restarted processor to be assigned the partitions")
    time.sleep(2)
    assert bronze_count(proc, "bronze.app_logs") == len(good)
    assert bronze_count(proc, "bronze.dead_letters") == len(bad) + 1
    assert proc.metrics().get('sluice_processor_kafka_messages_total{topic="app.logs"}', 0) == 0


def test_json_topic_lands_once_through_processor_kills(bins, certs, workdir):
    """A JSON topic with bad messages scattered through it, written by kcat while the
    processor landing it is SIGKILLed three times. Each restart reads again from the
    tables' marks, so runs of messages overlap what is landed (a dead letter in flight holds
    a mark back); only the rows a table lacks are landed. Every good row is in bronze once,
    numbered by its offset, and every bad message in the dead-letter table once."""
    kafka = Kafka(workdir)
    kafka.create_topic("events", partitions=2)
    proc = Processor(bins, certs, workdir, sections={"kafka": {
        "brokers": kafka.brokers,
        "json": {"events": {"schema": {"id": "long", "name": "string", "v": "double"}}},
    }}).start()
    rng = random.Random(11)
    chunks, good, bad = [], [], []
    for c in range(24):
        lines = []
        for i in range(c * 5_000, (c + 1) * 5_000):
            roll = rng.random()
            if roll < 0.002:
                line = b"not json %d" % i
            elif roll < 0.004:
                # Parses, and fails the run it is in: found one by one.
                line = b'{"id": %d, "v": "high"}' % i
            else:
                good.append(i)
                lines.append(json.dumps({"id": i, "name": f"n{i % 97}", "v": i / 8}).encode())
                continue
            bad.append(line)
            lines.append(line)
        chunks.append(b"\n".join(lines) + b"\n")

    def produce():
        for chunk in chunks:
            r = kafka.kcat("-P", "-t", "events", input=chunk)
            assert r.returncode == 0, r.stderr
            time.sleep(0.25)

    with ThreadPoolExecutor(1) as pool:
        produced = pool.submit(produce)
        for _ in range(3):
            time.sleep(rng.uniform(1.0, 2.5))
            proc.kill()
            proc.start()
        produced.result()

    wait_until(lambda: bronze_count(proc, "bronze.events") >= len(good)
               and bronze_count(proc, "bronze.dead_letters") >= len(bad), 180,
               "every message to land after the kills", interval=1)
    time.sleep(2)
    con = duckdb_connection()
    events = pyiceberg_table(proc, "bronze.events").metadata_location
    count, ids, numbered, min_id, max_id = con.execute(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT (_agent, _seq)), min(id), max(id) "
        f"FROM iceberg_scan('{events}')").fetchone()
    assert (count, ids, numbered) == (len(good),) * 3, f"{count} rows, {ids} ids, {numbered} offsets"
    assert (min_id, max_id) == (good[0], good[-1])
    letters = pyiceberg_table(proc, "bronze.dead_letters").metadata_location
    rows = con.execute(f"SELECT value, reason FROM iceberg_scan('{letters}')").fetchall()
    assert sorted(bytes(v) for v, _ in rows) == sorted(bad)
    assert all(("not JSON" in why) == v.startswith(b"not json") for v, why in rows)
    print("rows left out as already landed, last run:",
          proc.metrics().get('sluice_processor_duplicate_rows_total{table="bronze.events"}', 0))
