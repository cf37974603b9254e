"""SQL models: the example bronze -> silver -> gold pipeline checked against an independent
computation, quarantine of rows failing expectations, exactly-once incremental runs through
processor crashes, and model errors that stay contained."""

import collections
import datetime as dt
import json
import pathlib
import random
import subprocess
import time
import tomllib

from harness import Agent, Processor, canonical, pyiceberg_table, read_duckdb, read_pyiceberg, simulator_source

REPO = pathlib.Path(__file__).resolve().parents[2]
PIPELINE = REPO / "examples" / "pipeline"


def models_cli(bins, proc, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(bins.processor), "models", "--config", str(proc.config), *args],
                          capture_output=True, text=True, timeout=600)


def wait_caught_up(bins, proc, models: list[str], timeout=180) -> list[dict]:
    """Wait until every model has read every input snapshot (and exists)."""
    deadline = time.time() + timeout
    status = []
    while time.time() < deadline:
        r = models_cli(bins, proc, "list", "--json")
        assert r.returncode == 0, r.stderr
        status = json.loads(r.stdout)
        by_name = {s["model"]: s for s in status}
        if all(by_name[m]["rows"] is not None and by_name[m]["pending_snapshots"] == 0 for m in models):
            return status
        time.sleep(0.5)
    raise AssertionError(f"models did not catch up: {status}\n{proc.proc.output()[-3000:]}")


def key(row: dict) -> tuple:
    return (row["host"], canonical(row["ts"]))


def test_example_pipeline_bronze_silver_gold(bins, certs, workdir):
    models = tomllib.loads((PIPELINE / "processor.toml").read_text())["models"]
    proc = Processor(bins, certs, workdir, sections={"models": models}).start()
    # Two agents replay the same scenario: every sample reaches bronze twice, as when two
    # collectors scrape the same host. Silver must keep one copy.
    source = {"fleet": {"type": "simulator", "scenario": str(PIPELINE / "scenario.toml"), "pace": "fast"}}
    agents = [Agent(bins, certs, workdir, proc, source, agent_id=a).start() for a in ("edge-01", "edge-02")]
    for a in agents:
        assert a.wait(300) == 0, a.proc.output()
    status = wait_caught_up(bins, proc, ["silver.cpu", "gold.cpu_hourly", "gold.host_daily"])
    assert [s["model"] for s in status][0] == "silver.cpu"
    expected_quarantine = check_example_pipeline(proc, ["edge-01", "edge-02"])

    # Gold keeps its history: each rebuild is an overwrite snapshot over the last.
    t = pyiceberg_table(proc, "gold.cpu_hourly")
    ops = [s.summary.operation.value for s in t.snapshots()]
    assert ops[0] == "append" and set(ops[1:]) <= {"overwrite"}, ops
    # Silver records the last bronze snapshot it read, in the snapshot that holds its rows.
    silver_summary = pyiceberg_table(proc, "silver.cpu").current_snapshot().summary
    bronze_t = pyiceberg_table(proc, "bronze.cpu")
    assert int(silver_summary["sluice.model.input.bronze.cpu"]) == bronze_t.current_snapshot().snapshot_id

    m = proc.metrics()
    quarantined = {rule: m.get(f'sluice_processor_model_quarantined_rows_total{{model="silver.cpu",rule="{rule}"}}', 0)
                   for rule in ("unique", "cpu_in_range")}
    assert quarantined["unique"] == sum(n for (_, rule), n in expected_quarantine.items() if rule == "unique")
    assert quarantined["unique"] > 0
    assert quarantined["cpu_in_range"] == sum(n for (_, rule), n in expected_quarantine.items() if rule != "unique")
    assert m['sluice_processor_model_rows_total{model="silver.cpu"}'] == len(read_pyiceberg(proc, "silver.cpu"))
    assert m.get('sluice_processor_model_runs_total{model="silver.cpu",outcome="error"}', 0) == 0


def check_example_pipeline(proc, agents: list[str]) -> collections.Counter:
    """Check silver, its quarantine and both gold tables of examples/pipeline against an
    independent computation over bronze, each read by PyIceberg and by DuckDB. Returns the
    expected quarantine, (key, rules) -> rows."""
    # The independent computation, in Python over what PyIceberg reads from bronze.
    bronze = read_pyiceberg(proc, "bronze.cpu")
    per_agent = collections.Counter(r["_agent"] for r in bronze)
    assert per_agent == {a: 51_840 for a in agents}, per_agent

    def failed_rules(r):
        rules = []
        if r["cpu_pct"] is None or not 0 <= r["cpu_pct"] <= 100:
            rules.append("cpu_in_range")
        if r["host"] is None:
            rules.append("host_present")
        if r["mem_used_gb"] is None or not r["mem_used_gb"] > 0:
            rules.append("mem_positive")
        return rules

    # Each (host, ts) is sampled identically by both agents; the first copy that passes the
    # rules goes to silver, the second fails `unique`; copies failing a rule both go to
    # quarantine with that rule.
    expected_silver = {}
    expected_quarantine = collections.Counter()
    for r in bronze:
        rules = failed_rules(r)
        if rules:
            expected_quarantine[(key(r), ",".join(rules))] += 1
        elif key(r) in expected_silver:
            expected_quarantine[(key(r), "unique")] += 1
        else:
            expected_silver[key(r)] = r
    bad = sum(n for (_, rule), n in expected_quarantine.items() if rule != "unique")
    assert bad > 0, "the scenario's faulty exporters should fail cpu_in_range"
    assert len(expected_silver) == 51_840 - bad // len(agents)

    for reader in (read_pyiceberg, read_duckdb):
        silver = reader(proc, "silver.cpu")
        assert len(silver) == len(expected_silver), reader.__name__
        assert {key(r) for r in silver} == set(expected_silver), reader.__name__
        for r in silver[:2000]:
            b = expected_silver[key(r)]
            assert (r["role"], r["cores"], r["cpu_pct"], r["mem_used_gb"]) == \
                (b["role"], b["cores"], b["cpu_pct"], b["mem_used_gb"])
            assert r["flagged"] == (b["_anomaly"] is not None)
        quarantine = reader(proc, "quarantine.silver_cpu")
        got = collections.Counter((key(r), r["_rule"]) for r in quarantine)
        assert got == expected_quarantine, reader.__name__

    # Gold, recomputed independently from the expected silver rows.
    hourly = collections.defaultdict(list)
    daily = collections.defaultdict(list)
    for r in expected_silver.values():
        ts = r["ts"]
        hourly[(canonical(ts.replace(minute=0, second=0, microsecond=0)), r["role"])].append(r)
        daily[(r["host"], ts.date())].append(r)
    for reader in (read_pyiceberg, read_duckdb):
        gold = reader(proc, "gold.cpu_hourly")
        assert len(gold) == len(hourly), reader.__name__
        for g in gold:
            rows = hourly[(canonical(g["hour"]), g["role"])]
            assert g["samples"] == len(rows)
            assert g["hosts"] == len({r["host"] for r in rows})
            assert abs(g["avg_cpu"] - sum(r["cpu_pct"] for r in rows) / len(rows)) < 1e-9
            assert g["max_cpu"] == max(r["cpu_pct"] for r in rows)
            assert abs(g["avg_mem_gb"] - sum(r["mem_used_gb"] for r in rows) / len(rows)) < 1e-9
        gold = reader(proc, "gold.host_daily")
        assert len(gold) == len(daily), reader.__name__
        for g in gold:
            day = g["day"] if isinstance(g["day"], dt.date) else dt.date.fromisoformat(str(g["day"]))
            rows = daily[(g["host"], day)]
            assert g["samples"] == len(rows)
            assert g["busy_samples"] == sum(1 for r in rows if r["cpu_pct"] > 60)
            assert abs(g["avg_cpu"] - sum(r["cpu_pct"] for r in rows) / len(rows)) < 1e-9

    return expected_quarantine

def test_incremental_model_survives_processor_crashes(bins, certs, workdir):
    """SIGKILL the processor again and again while silver catches up in many small runs:
    every bronze row ends up exactly once in silver or quarantine."""
    n = 60_000
    models = {
        "silver.telemetry": {
            "sql": "SELECT sample, host, cpu, errors, _agent AS agent, _seq AS seq FROM bronze.telemetry",
            "max_files_per_run": 1,
            "expect": {"cpu_ok": "cpu < 55"},
        },
        "gold.per_host": {
            "mode": "recompute",
            "sql": "SELECT host, count(*) AS n, sum(errors) AS errors FROM silver.telemetry GROUP BY host",
        },
    }
    proc = Processor(bins, certs, workdir, sections={"models": models}, commit_interval="100ms").start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=6_000)},
                  batch={"max_rows": 500, "max_age": "50ms"}).start()
    rng = random.Random(5)
    kills = 0
    deadline = time.time() + 240
    while agent.proc.alive() and time.time() < deadline:
        time.sleep(rng.uniform(0.4, 1.6))
        proc.kill()
        kills += 1
        time.sleep(rng.uniform(0.0, 0.5))
        proc.start()
    assert agent.wait(120) == 0, agent.proc.output()
    # Then a few more kills while silver works through the backlog.
    for _ in range(3):
        time.sleep(rng.uniform(0.2, 0.8))
        proc.kill()
        kills += 1
        proc.start()
    assert kills >= 5
    wait_caught_up(bins, proc, ["silver.telemetry", "gold.per_host"], timeout=240)

    bronze = read_pyiceberg(proc, "bronze.telemetry")
    assert len(bronze) == n
    silver = read_pyiceberg(proc, "silver.telemetry")
    quarantine = read_pyiceberg(proc, "quarantine.silver_telemetry")
    seen = collections.Counter((r["agent"], r["seq"], r["sample"]) for r in silver + quarantine)
    assert max(seen.values()) == 1, "a bronze row was processed twice"
    assert set(seen) == {(r["_agent"], r["_seq"], r["sample"]) for r in bronze}
    assert all(r["cpu"] < 55 for r in silver)
    assert all(r["cpu"] >= 55 and r["_rule"] == "cpu_ok" for r in quarantine)
    assert len(quarantine) > 0
    # Many runs happened (one bronze file each), so the crashes hit the model mid-way.
    assert len(pyiceberg_table(proc, "silver.telemetry").snapshots()) > 10

    per_host = collections.Counter(r["host"] for r in silver)
    gold = {r["host"]: r for r in read_duckdb(proc, "gold.per_host")}
    assert {h: g["n"] for h, g in gold.items()} == dict(per_host)
    errors = collections.Counter()
    for r in silver:
        errors[r["host"]] += r["errors"]
    assert {h: g["errors"] for h, g in gold.items()} == dict(errors)


def test_model_config_errors_and_failing_models(bins, certs, workdir):
    # A cycle is refused when the config is loaded, naming the models.
    cyclic = {
        "silver.a": {"sql": "SELECT * FROM silver.b"},
        "silver.b": {"sql": "SELECT * FROM silver.a"},
    }
    proc = Processor(bins, certs, workdir, sections={"models": cyclic})
    r = subprocess.run([str(bins.processor), "validate", "--config", str(proc.config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "cycle" in r.stderr and "silver.a" in r.stderr and "silver.b" in r.stderr, r.stderr

    # A model whose SQL names a missing column fails at run time: counted, logged, retried
    # with backoff, and the other models keep running.
    models = {
        "silver.broken": {"sql": "SELECT no_such_column FROM bronze.telemetry"},
        "silver.good": {"sql": "SELECT sample, cpu FROM bronze.telemetry"},
        "silver.not_bool": {"sql": "SELECT sample FROM bronze.telemetry", "expect": {"x": "sample + 1"}},
    }
    work2 = workdir / "run"
    work2.mkdir()
    proc = Processor(bins, certs, work2, sections={"models": models}).start()
    agent = Agent(bins, certs, work2, proc, {"telemetry": simulator_source(5_000)}).start()
    assert agent.wait(120) == 0, agent.proc.output()
    wait_caught_up(bins, proc, ["silver.good"])
    assert len(read_pyiceberg(proc, "silver.good")) == 5_000
    m = proc.metrics()
    assert m.get('sluice_processor_model_runs_total{model="silver.broken",outcome="error"}', 0) >= 1
    assert m.get('sluice_processor_model_runs_total{model="silver.not_bool",outcome="error"}', 0) >= 1
    log = proc.proc.output()
    assert "no_such_column" in log
    assert "expect.x" in log and "not a boolean" in log
    # On demand, the same error reaches the terminal with a non-zero exit.
    r = models_cli(bins, proc, "run", "--model", "silver.broken")
    assert r.returncode != 0 and "no_such_column" in r.stderr, r.stderr
