"""Scenario simulation: the `simulate` command (determinism, Parquet and JSON lines, errors that
name file, line and key) and scenario sources landing related streams in bronze."""

import hashlib
import json
import pathlib
import re
import subprocess

import duckdb
import pyarrow.parquet as pq

from harness import REPO, Agent, Processor, checksum, read_duckdb, read_pyiceberg

SIM = REPO / "examples" / "sim"


def simulate(bins, *args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(bins.agent), "simulate", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jsonl(path: pathlib.Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_same_seed_same_bytes_whatever_the_batch_size_and_threads(bins, workdir):
    runs = [("a", 8192, 1), ("b", 1000, 3), ("c", 50_000, 2)]
    for name, batch, threads in runs:
        simulate(bins, SIM / "ecommerce.toml", "--rows", 20_000, "--batch", batch, "--threads", threads,
                 "--out", workdir / f"{name}-{{stream}}.jsonl")
        simulate(bins, SIM / "iot-fleet.toml", "--until", "2026-01-01T06:00:00Z", "--batch", batch,
                 "--threads", threads, "--out", workdir / f"{name}-iot.jsonl")
    for stream in ("orders", "payments", "shipments"):
        digests = {sha(workdir / f"{name}-{stream}.jsonl") for name, _, _ in runs}
        assert len(digests) == 1, stream
    assert len({sha(workdir / f"{name}-iot.jsonl") for name, _, _ in runs}) == 1
    # Another seed, other data.
    simulate(bins, SIM / "iot-fleet.toml", "--until", "2026-01-01T06:00:00Z", "--seed", 8,
             "--out", workdir / "other-iot.jsonl")
    assert sha(workdir / "other-iot.jsonl") != sha(workdir / "a-iot.jsonl")


def test_parquet_output_with_labels_and_summary(bins, workdir):
    # The IoT example with a tenth of the sensors, to keep the file small.
    scenario = workdir / "iot.toml"
    scenario.write_text((SIM / "iot-fleet.toml").read_text().replace("count = 500", "count = 50"))
    r = simulate(bins, scenario, "--until", "2026-01-04T00:00:00Z", "--out", workdir / "iot.parquet",
                 "--threads", 2)
    # 50 sensors every 30 s for 3 days, less the 10 sensors silent for 20 minutes.
    expected = 50 * 2 * 60 * 24 * 3 - 10 * 40
    assert f"readings: {expected} rows" in r.stderr, r.stderr
    con = duckdb.connect()
    path = str(workdir / "iot.parquet")
    assert con.execute(f"SELECT count(*) FROM '{path}'").fetchone()[0] == expected
    labels = dict(con.execute(
        f"SELECT l, count(*) FROM (SELECT unnest(string_split(_anomaly, ',')) AS l FROM '{path}' "
        "WHERE _anomaly IS NOT NULL) GROUP BY l").fetchall())
    # The summary counts exactly the labelled rows of the file.
    for label, n in labels.items():
        assert f"{label} {n}" in r.stderr, (label, n, r.stderr)
    # Stuck: 5 sensors x 45 min at 2/min, on each of the days the window opens in the run.
    assert labels["stuck"] == 5 * 90 * 2
    assert labels["dropout"] == 10
    # Spikes: 0.02 % of the readings, each 25 degrees above its neighbours.
    assert 0.5 * expected * 0.0002 < labels["spike"] < 1.5 * expected * 0.0002
    jump = con.execute(
        f"""SELECT min(abs(temp_c - prev)) FROM (
              SELECT temp_c, _anomaly, lag(temp_c) OVER (PARTITION BY sensor_id ORDER BY ts) AS prev
              FROM '{path}') WHERE _anomaly = 'spike' AND prev IS NOT NULL""").fetchone()[0]
    assert jump > 20, jump
    # Derived fields computed from the (changed) values.
    bad = con.execute(f"SELECT count(*) FROM '{path}' WHERE abs(temp_f - (temp_c * 9 / 5 + 32)) > 0.051"
                      ).fetchone()[0]
    assert bad == 0
    # Late rows: out of order in the file (read in file order), still each reading once.
    ts = pq.read_table(path, columns=["ts"]).column("ts").to_pylist()
    latest, out_of_order = ts[0], 0
    for t in ts:
        if t < latest:
            out_of_order += 1
        latest = max(latest, t)
    assert 0.002 * expected < out_of_order < 0.008 * expected, out_of_order
    dupes = con.execute(f"SELECT count(*) - count(DISTINCT (sensor_id, seq)) FROM '{path}'").fetchone()[0]
    assert dupes == 0


def test_bad_scenarios_name_file_line_and_key(bins, workdir):
    text = (SIM / "iot-fleet.toml").read_text()
    cases = [
        (text.replace("stddev = 6.0", "stddev = -6.0"), "streams.readings.fields.rssi_dbm", "stddev must be > 0"),
        (text.replace('name = "model" }', 'name = "colour" }'), "streams.readings.fields.model",
         'no attribute "colour"'),
        (text.replace('expr = "battery_v < 3.3"', 'expr = "battery < 3.3"'), "streams.readings.fields.low_battery",
         'no field named "battery"'),
        (text.replace('every = "30s"', 'every = "30s", per_second = 1.0'), "streams.readings.rate",
         "only one of"),
        (text.replace("magnitude = 25.0", "magnitude = 25.0\nper_hour = 1.0"),
         "streams.readings.anomalies.0.per_hour", "does not apply to a spike"),
    ]
    for i, (bad, key, words) in enumerate(cases):
        path = workdir / f"bad{i}.toml"
        path.write_text(bad)
        r = simulate(bins, path, "--rows", 10, "--out", workdir / "x.jsonl", check=False)
        assert r.returncode != 0
        assert str(path) in r.stderr and key in r.stderr and words in r.stderr, r.stderr
        # The line number points at the line where the key is written.
        line = int(r.stderr.split(f"{path}:")[1].split(":")[0])
        assert bad.splitlines()[line - 1].lstrip().startswith(key.split(".")[-1]), (line, r.stderr)
    # A TOML syntax error and an unknown key are named too.
    path = workdir / "syntax.toml"
    path.write_text(text.replace("count = 500", "count = 500\ncolour = 3"))
    r = simulate(bins, path, "--rows", 10, check=False)
    assert r.returncode != 0 and "colour" in r.stderr and "line" in r.stderr, r.stderr


def test_scenario_source_lands_related_streams(bins, certs, workdir):
    n = 3000
    proc = Processor(bins, certs, workdir).start()
    try:
        source = {"type": "simulator", "scenario": str(SIM / "ecommerce.toml"), "pace": "fast", "total": n}
        agent = Agent(bins, certs, workdir, proc, {"shop": source}).start()
        assert agent.wait(180) == 0, agent.proc.output()
        # The same source, simulated locally, is the reference.
        simulate(bins, "--config", agent.config, "--source", "shop", "--out", workdir / "ref-{stream}.jsonl")
        for stream, columns in [
            ("orders", ["ts", "order_no", "order_id", "customer_id", "country", "items", "amount", "channel"]),
            ("payments", ["ts", "payment_id", "order_id", "customer_id", "amount", "method"]),
            ("shipments", ["ts", "order_id", "customer_id", "carrier", "tracking"]),
        ]:
            ref = jsonl(workdir / f"ref-{stream}.jsonl")
            assert 0 < len(ref) <= n
            for reader in (read_pyiceberg, read_duckdb):
                rows = reader(proc, f"bronze.{stream}")
                assert len(rows) == len(ref), (stream, reader.__name__)
                assert checksum(rows, columns) == checksum(ref, columns), (stream, reader.__name__)
        # Keys line up in the lake: every payment joins its order with the same amount.
        orders = {r["order_id"]: r for r in read_pyiceberg(proc, "bronze.orders")}
        payments = read_pyiceberg(proc, "bronze.payments")
        assert all(p["order_id"] in orders and orders[p["order_id"]]["amount"] == p["amount"]
                   and orders[p["order_id"]]["customer_id"] == p["customer_id"] for p in payments)
    finally:
        proc.stop()


def test_example_agent_configs_validate(bins):
    """The shipped examples stay true to the code (agent-plugins.toml needs built plugins and
    is checked by the wasm tests' configs instead)."""
    for name in ("agent.toml", "agent-scenario.toml"):
        r = subprocess.run([str(bins.agent), "validate", "--config", str(REPO / "examples" / name)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (name, r.stderr)
    r = subprocess.run([str(bins.agent), "validate", "--config", str(REPO / "examples" / "agent-scenario.toml")],
                       capture_output=True, text=True, timeout=60)
    assert "-> stream fleet_cpu" in r.stdout and "-> stream fleet_logs" in r.stdout and "_anomaly" in r.stdout
    # The example processor grants edge-01 every stream the example agents write.
    import fnmatch
    import tomllib
    grants = tomllib.loads((REPO / "examples" / "processor.toml").read_text())["access"]["allow"]["edge-01"]
    agent = tomllib.loads((REPO / "examples" / "agent.toml").read_text())
    plugins = tomllib.loads((REPO / "examples" / "agent-plugins.toml").read_text())
    streams = [*agent["sources"], *plugins["sources"],
               *re.findall(r"-> stream (\w+)", r.stdout)]
    assert len(streams) >= 6, streams
    for stream in streams:
        assert any(fnmatch.fnmatchcase(stream, g) for g in grants), (stream, grants)
