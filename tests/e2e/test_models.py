"""SQL models: the example bronze -> silver -> gold pipeline checked against an independent
computation, quarantine of rows failing expectations, exactly-once incremental runs through
processor crashes, and model errors that stay contained."""

import collections
import random
import time
import tomllib

from harness import Agent, Processor, pyiceberg_table, read_duckdb, read_pyiceberg, simulator_source, wait_until
from pipeline_example import PIPELINE, check_example_pipeline

def test_example_pipeline_bronze_silver_gold(bins, certs, workdir):
    models = tomllib.loads((PIPELINE / "processor.toml").read_text())["models"]
    proc = Processor(bins, certs, workdir, sections={"models": models}).start()
    # Two agents replay the same scenario: every sample reaches bronze twice, as when two
    # collectors scrape the same host. Silver must keep one copy.
    source = {"fleet": {"type": "simulator", "scenario": str(PIPELINE / "scenario.toml"), "pace": "fast"}}
    # One after the other, with the models caught up in between, so gold is built, then
    # rebuilt over a silver that changed.
    for agent_id in ("edge-01", "edge-02"):
        a = Agent(bins, certs, workdir, proc, source, agent_id=agent_id).start()
        assert a.wait(300) == 0, a.proc.output()
        status = proc.wait_models(["silver.cpu", "gold.cpu_hourly", "gold.host_daily"])
    assert [s["model"] for s in status][0] == "silver.cpu"
    expected_quarantine = check_example_pipeline(proc, ["edge-01", "edge-02"])

    # Gold keeps its history: each rebuild is an overwrite snapshot over the last.
    t = pyiceberg_table(proc, "gold.cpu_hourly")
    ops = [s.summary.operation.value for s in sorted(t.snapshots(), key=lambda s: s.sequence_number)]
    assert len(ops) >= 2 and ops[0] == "append" and all(o == "overwrite" for o in ops[1:]), ops
    # Silver records the last bronze snapshot it read, in the snapshot that holds its rows.
    silver_summary = pyiceberg_table(proc, "silver.cpu").current_snapshot().summary
    bronze_t = pyiceberg_table(proc, "bronze.cpu")
    assert int(silver_summary["sluice.model.input.bronze.cpu"]) == bronze_t.current_snapshot().snapshot_id

    m = proc.metrics()
    # A row failing two rules counts once for each.
    for rule in ("unique", "cpu_in_range", "host_present", "mem_positive"):
        want = sum(n for (_, rules), n in expected_quarantine.items() if rule in rules.split(","))
        got = m.get(f'sluice_processor_model_quarantined_rows_total{{model="silver.cpu",rule="{rule}"}}', 0)
        assert got == want, (rule, got, want)
    assert m['sluice_processor_model_quarantined_rows_total{model="silver.cpu",rule="unique"}'] > 0
    assert m['sluice_processor_model_rows_total{model="silver.cpu"}'] == len(read_pyiceberg(proc, "silver.cpu"))
    assert m['sluice_processor_model_runs_total{model="silver.cpu",outcome="ran"}'] >= 1
    assert m.get('sluice_processor_model_runs_total{model="silver.cpu",outcome="error"}', 0) == 0


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
    proc.wait_models(["silver.telemetry", "gold.per_host"], timeout=240)

    bronze = read_pyiceberg(proc, "bronze.telemetry")
    assert len(bronze) == n and len({r["sample"] for r in bronze}) == n
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
    r = proc.cli("validate", timeout=30)
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
    proc.wait_models(["silver.good"])
    assert len(read_pyiceberg(proc, "silver.good")) == 5_000
    # The failing models may have seen bronze a poll later than the good one.
    for model in ("silver.broken", "silver.not_bool"):
        failed = f'sluice_processor_model_runs_total{{model="{model}",outcome="error"}}'
        wait_until(lambda: proc.metrics().get(failed, 0) >= 1, 30, f"{model} to fail")
    log = proc.proc.output()
    assert "no_such_column" in log
    assert "expect.x" in log and "not a boolean" in log
    # On demand, the same error reaches the terminal with a non-zero exit.
    r = proc.cli("models", "run", "--model", "silver.broken")
    assert r.returncode != 0 and "no_such_column" in r.stderr, r.stderr
