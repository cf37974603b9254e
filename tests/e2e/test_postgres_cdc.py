"""The postgres-cdc connector against a real PostgreSQL (wal_level = logical): a snapshot
and then a workload of inserts, updates (a key among them, and large TOASTed values left
unchanged) and deletes, while the agent and the processor are each SIGKILLed twice. Bronze
holds each change once, in commit order; a silver model applying them equals the table;
the slot's confirmed flush position never passes what the lake holds, and WAL is released."""

import contextlib
import datetime as dt
import hashlib
import random
import threading
import time

import psycopg2
import pytest

from harness import TOKEN, Agent, Kafka, Postgres, Processor, canonical, kill_in_turn, networked_source, \
    pyiceberg_table, read_pyiceberg, wait_until

COLUMNS = ["id", "customer", "amount", "qty", "status", "updated", "note"]

# The latest change per key, unless it is a delete: the table as of the last change.
SILVER = """
SELECT id, customer, amount, qty, status, updated, note FROM (
  SELECT *, row_number() OVER (PARTITION BY id ORDER BY lsn DESC, seq DESC) AS rn FROM bronze.orders
) AS latest WHERE rn = 1 AND op <> 'd'
"""


@pytest.fixture
def pg(workdir):
    """A PostgreSQL server with logical decoding, removed after the test."""
    server = Postgres(workdir, settings={"wal_level": "logical"})
    yield server
    server.close()


@pytest.fixture
def later():
    """Register what to stop after the test, whatever happens (last registered, first)."""
    with contextlib.ExitStack() as stack:
        yield stack.callback


def started(later, agent: Agent) -> Agent:
    """`agent`, started, and killed after the test."""
    agent.start()
    later(agent.proc.kill)
    return agent


def cdc_source(pg: Postgres, **config) -> dict:
    return networked_source("postgres_cdc", pg.port,
                            {"user": "sluice", "database": "lake", "table": "orders", **config})


def connect(pg: Postgres):
    c = psycopg2.connect(host="127.0.0.1", port=pg.port, user="sluice", dbname="lake")
    c.autocommit = True
    return c


class Workload:
    """Transactions of single-row statements, each recorded as (xid, [(op, id), ...]) in
    commit order. Some are larger than a batch, so checkpoints fall inside them."""

    def __init__(self, pg: Postgres, first_id: int, txns: int, seed=11):
        self.conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user="sluice", dbname="lake")
        self.rng = random.Random(seed)
        self.next_id = first_id
        self.live = set(range(1, first_id))
        self.txns = txns
        self.done: list[tuple[int, list[tuple[str, int]]]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def row(self, i):
        r = self.rng
        big = r.random() < 0.05
        return (i, r.choice(["ann", "bø", "o'neil", "李", 'say "hi"']), round(r.uniform(-1e6, 1e6), 2),
                r.choice([None, r.randint(-5, 1000)]), r.choice(["new", "paid", None]),
                dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=r.randint(0, 10**13)),
                # Incompressible and large: stored out of line (TOAST), so an update that
                # leaves it is sent without it.
                r.randbytes(6000).hex() if big else None)

    def run(self):
        try:
            for n in range(self.txns):
                cur = self.conn.cursor()
                cur.execute("SELECT txid_current()")
                xid = cur.fetchone()[0]
                ops = []
                size = 1200 if n % 97 == 50 else self.rng.randint(1, 12)
                for _ in range(size):
                    kind = self.rng.random()
                    if kind < 0.5 or len(self.live) < 50:
                        i = self.next_id
                        self.next_id += 1
                        cur.execute("INSERT INTO orders VALUES (%s, %s, %s, %s, %s, %s, %s)", self.row(i))
                        self.live.add(i)
                        ops.append(("c", i))
                    elif kind < 0.8:
                        i = self.rng.choice(sorted(self.live))
                        cur.execute("UPDATE orders SET amount = %s, status = %s WHERE id = %s",
                                    (round(self.rng.uniform(0, 100), 2), "shipped", i))
                        ops.append(("u", i))
                    elif kind < 0.85:
                        i = self.rng.choice(sorted(self.live))
                        j = self.next_id
                        self.next_id += 1
                        cur.execute("UPDATE orders SET id = %s WHERE id = %s", (j, i))
                        self.live.discard(i)
                        self.live.add(j)
                        ops += [("d", i), ("u", j)]
                    else:
                        i = self.rng.choice(sorted(self.live))
                        cur.execute("DELETE FROM orders WHERE id = %s", (i,))
                        self.live.discard(i)
                        ops.append(("d", i))
                self.conn.commit()
                self.done.append((xid, ops))
                time.sleep(self.rng.uniform(0.0, 0.06))
        except BaseException as e:  # surfaced by the test
            self.error = e


class SlotWatch:
    """Samples, every 0.3 s, the slot's confirmed flush position and then the commits
    (`lsn`) the lake holds in the stream's table; `check` holds them against every commit
    the run made."""

    def __init__(self, pg: Postgres, proc: Processor, stream: str):
        self.samples: list[tuple[int, set[int]]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(pg, proc, stream), daemon=True)
        self.thread.start()

    def run(self, pg, proc, stream):
        mon = connect(pg)
        while not self.done.is_set():
            try:
                c = mon.cursor()
                c.execute("SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s",
                          (f"sluice_{stream}",))
                row = c.fetchone()
                if row and row[0] is not None:
                    lake = pyiceberg_table(proc, f"bronze.{stream}").scan(selected_fields=("lsn",)).to_arrow()
                    self.samples.append((int(row[0]), set(lake.column("lsn").to_pylist())))
            except Exception:
                pass  # the table may not exist yet, or be mid-commit
            time.sleep(0.3)

    def stop(self) -> list[tuple[int, set[int]]]:
        self.done.set()
        self.thread.join(10)
        return self.samples

    @staticmethod
    def check(samples, commits: list[int]) -> None:
        """The slot never confirmed a commit the lake lacked at that moment, and it moved."""
        assert len(samples) >= 10, len(samples)
        for flushed, lake in samples:
            behind = [x for x in sorted(set(commits)) if x < flushed and x not in lake]
            assert not behind, f"slot flushed to {flushed} while the lake lacked commits {behind[:5]}"
        assert any(f > min(commits) for f, _ in samples), "the slot moved during the run"


def wait_released(pg: Postgres, slot: str, start_lsn: str, end_lsn: int) -> None:
    """The slot confirms past `end_lsn`, and its restart point moves past `start_lsn` once
    a checkpoint logs the running transactions: the WAL between is released."""
    cur = connect(pg).cursor()

    def released():
        cur.execute("CHECKPOINT")
        cur.execute("SELECT confirmed_flush_lsn - '0/0', restart_lsn - %s::pg_lsn FROM pg_replication_slots "
                    "WHERE slot_name = %s", (start_lsn, slot))
        flushed, restart_past_start = cur.fetchone()
        return flushed >= end_lsn and restart_past_start > 0

    wait_until(released, 60, "the slot released the workload's WAL", interval=1)


def test_changes_land_once_in_order_through_kills_and_silver_equals_the_table(bins, certs, workdir, pg, later):
    db = connect(pg)
    cur = db.cursor()
    cur.execute("""CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL,
                   amount numeric(12,2), qty int, status text, updated timestamptz, note text)""")
    cur.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    seed = Workload(pg, 1, 0, seed=3)
    for i in range(1, 3001):
        cur.execute("INSERT INTO orders VALUES (%s, %s, %s, %s, %s, %s, %s)", seed.row(i))
    cur.execute("SELECT pg_current_wal_lsn()")
    start_lsn = cur.fetchone()[0]

    proc = Processor(bins, certs, workdir, sections={
        "models": {"silver.orders": {"mode": "recompute", "sql": SILVER}}}).start()
    later(proc.stop)
    sources = {"orders": cdc_source(pg)}

    def start_agent():
        return started(later, Agent(bins, certs, workdir, proc, sources,
                                    batch={"max_rows": 2000, "max_age": "100ms"}))

    agent = start_agent()
    wait_until(lambda: agent.metrics().get('sluice_agent_acked_rows_total{stream="orders"}', 0) >= 1000,
               60, "part of the snapshot landed")
    work = Workload(pg, 3001, 360)
    work.thread.start()

    watch = SlotWatch(pg, proc, "orders")
    agent = kill_in_turn(["agent", "processor", "agent", "processor"], agent, start_agent, proc, random.Random(5), (2.0, 5.0))
    work.thread.join(300)
    assert work.error is None, work.error
    assert not work.thread.is_alive()
    cur.execute("SELECT pg_current_wal_lsn() - '0/0'")
    end_lsn = int(cur.fetchone()[0])

    want_xids = {x for x, _ in work.done}

    def landed():
        rows = pyiceberg_table(proc, "bronze.orders").scan(selected_fields=("xid",)).to_arrow()
        return want_xids <= set(rows.column("xid").to_pylist())

    wait_until(landed, 180, "every transaction in bronze")
    samples = watch.stop()

    bronze = read_pyiceberg(proc, "bronze.orders")
    changes = [r for r in bronze if r["op"] != "r"]
    # Each change once.
    keys = [(r["lsn"], r["seq"]) for r in changes]
    assert len(keys) == len(set(keys)), "a change landed twice"
    # Exactly the workload's, statement by statement.
    by_xid: dict[int, list] = {}
    for r in changes:
        by_xid.setdefault(r["xid"], []).append(r)
    assert set(by_xid) == want_xids
    for xid, ops in work.done:
        got = sorted(by_xid[xid], key=lambda r: r["seq"])
        assert [r["seq"] for r in got] == list(range(len(ops))), xid
        assert [(r["op"], r["id"]) for r in got] == ops, xid
        assert len({r["lsn"] for r in got}) == 1
    # In commit order.
    lsns = [by_xid[x][0]["lsn"] for x, _ in work.done]
    assert lsns == sorted(lsns) and len(set(lsns)) == len(lsns)
    # The snapshot: each row once, all at the slot's start, before every change.
    snap = [r for r in bronze if r["op"] == "r"]
    assert len({r["id"] for r in snap}) == len(snap) > 0
    assert len({r["lsn"] for r in snap}) == 1 and snap[0]["lsn"] < min(lsns)
    assert sum(1 for _, ops in work.done for _ in ops) == len(changes)

    SlotWatch.check(samples, lsns)
    # Silver equals the table.
    cur.execute(f"SELECT {', '.join(COLUMNS)} FROM orders")
    table = sorted((tuple(canonical(v) for v in r) for r in cur.fetchall()), key=lambda r: r[0])

    def silver_matches():
        rows = read_pyiceberg(proc, "silver.orders")
        got = sorted((tuple(canonical(r[c]) for c in COLUMNS) for r in rows), key=lambda r: r[0])
        return got == table

    wait_until(silver_matches, 120, "silver equal to the table")

    wait_released(pg, "sluice_orders", start_lsn, end_lsn)
    m = agent.metrics()
    assert m['sluice_agent_plugin_network_bytes_total{plugin="orders",direction="in"}'] > 0


def test_a_column_added_to_the_table_reaches_bronze_while_the_agent_runs(bins, certs, workdir, pg, later):
    """ALTER TABLE ... ADD COLUMN mid-stream: the source reopens with the new column, the
    agent cuts its batches there and the processor adds the column to bronze. Nothing is
    lost, the agent is not restarted, and earlier rows read the column as null."""
    db = connect(pg)
    cur = db.cursor()
    cur.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
    cur.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 100) g")
    proc = Processor(bins, certs, workdir).start()
    later(proc.stop)
    source = cdc_source(pg, table="items")
    agent = started(later, Agent(bins, certs, workdir, proc, {"items": source})).wait_api()
    wait_until(lambda: agent.metrics().get('sluice_agent_acked_rows_total{stream="items"}', 0) >= 100,
               60, "the snapshot landed")
    cur.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(101, 150) g")
    cur.execute("ALTER TABLE items ADD COLUMN region text")
    cur.execute("INSERT INTO items SELECT g, 'v' || g, 'r' || (g % 3) FROM generate_series(151, 200) g")
    cur.execute("UPDATE items SET region = 'north' WHERE id = 7")

    def landed():
        t = pyiceberg_table(proc, "bronze.items")
        return "region" in [f.name for f in t.schema().fields] and len(t.scan().to_arrow()) >= 201

    wait_until(landed, 90, "the new column and every change in bronze")
    rows = read_pyiceberg(proc, "bronze.items")
    assert len(rows) == 201
    assert sorted(r["id"] for r in rows if r["op"] in ("r", "c")) == list(range(1, 201))
    for r in rows:
        if r["op"] == "c" and r["id"] > 150:
            assert r["region"] == f"r{r['id'] % 3}", r
        elif r["op"] == "u":
            assert (r["id"], r["v"], r["region"]) == (7, "v7", "north")
        else:
            assert r["region"] is None, r
    m = agent.metrics()
    assert agent.proc.alive()
    assert m.get('sluice_agent_plugin_failures_total{plugin="items",reason="plugin_error"}', 0) >= 1
    assert sum(v for k, v in m.items() if k.startswith("sluice_agent_lost_rows_total")) == 0
    assert "changed shape (column \"region\" was added)" in agent.proc.output()


def test_behind_a_kafka_sink_the_slot_follows_what_the_lake_holds(bins, certs, workdir, pg, later):
    """Through Kafka the brokers' acknowledgements say nothing of the lake: without
    `committed_api` the slot does not move at all; with it (a token of the `committed`
    role) the agent learns from the processor what bronze holds, the slot follows it and
    never passes it, and the WAL is released."""
    kafka = Kafka(workdir)
    later(kafka.kill)
    kafka.create_topic("sluice.items", partitions=1)
    cur = connect(pg).cursor()
    cur.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
    committed_token = "sluice_" + hashlib.sha256(b"committed" + TOKEN.encode()).hexdigest()
    tokens = [{"name": "e2e", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "roles": ["read", "metrics"]},
              {"name": "agents", "sha256": hashlib.sha256(committed_token.encode()).hexdigest(),
               "roles": ["committed"]}]
    proc = Processor(bins, certs, workdir, api={"tokens": tokens},
                     sections={"kafka": {"brokers": kafka.brokers, "topics": ["sluice.items"]}}).start()
    later(proc.stop)
    token_file = workdir / "committed.token"
    token_file.write_text(committed_token + "\n")
    sink = {"type": "kafka", "brokers": kafka.brokers}
    sources = {"items": cdc_source(pg, table="items", snapshot=False)}

    def slot():
        cur.execute("SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = 'sluice_items'")
        row = cur.fetchone()
        return int(row[0]) if row else None

    def insert(a, b):
        cur.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(%s, %s) g", (a, b))

    def in_bronze():
        try:
            return len(pyiceberg_table(proc, "bronze.items").scan(selected_fields=("id",)).to_arrow())
        except Exception:
            return 0

    # Without committed_api: the rows land, the slot stays where it was made.
    agent = started(later, Agent(bins, certs, workdir, proc, sources, sink=sink)).wait_api()
    wait_until(lambda: slot() is not None, 60, "the slot")
    created = slot()
    for i in range(5):
        insert(i * 100 + 1, i * 100 + 100)
    wait_until(lambda: in_bronze() >= 500, 90, "500 rows in bronze")
    time.sleep(3)
    assert slot() == created, "no one told the slot anything"
    agent.proc.kill()

    # With it: the slot follows the lake.
    cur.execute("SELECT pg_current_wal_lsn()")
    start_lsn = cur.fetchone()[0]
    sink.update({"committed_api": f"http://127.0.0.1:{proc.api_port}",
                 "committed_token_file": str(token_file), "committed_interval": "200ms"})
    agent = started(later, Agent(bins, certs, workdir, proc, sources, sink=sink)).wait_api()
    watch = SlotWatch(pg, proc, "items")
    for i in range(5, 60):
        insert(i * 100 + 1, i * 100 + 100)
        time.sleep(0.05)
    cur.execute("SELECT pg_current_wal_lsn() - '0/0'")
    end_lsn = int(cur.fetchone()[0])
    wait_until(lambda: in_bronze() >= 6000, 120, "6000 rows in bronze")
    wait_released(pg, "sluice_items", start_lsn, end_lsn)
    samples = watch.stop()
    rows = read_pyiceberg(proc, "bronze.items")
    assert sorted(r["id"] for r in rows) == list(range(1, 6001)), "each change once"
    SlotWatch.check(samples, [r["lsn"] for r in rows])
    assert "cannot learn what the lake holds" not in agent.proc.output()
