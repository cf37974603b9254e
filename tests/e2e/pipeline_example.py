"""The example pipeline (examples/pipeline) checked against an independent computation:
shared by the model tests on the default lake and on S3 + PostgreSQL."""

import collections
import datetime as dt
import pathlib

from harness import canonical, read_duckdb, read_pyiceberg

PIPELINE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "pipeline"


def key(row: dict) -> tuple:
    return (row["host"], canonical(row["ts"]))


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
        for r in silver:
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
        assert sorted((canonical(g["hour"]), g["role"]) for g in gold) == sorted(hourly), reader.__name__
        for g in gold:
            rows = hourly[(canonical(g["hour"]), g["role"])]
            assert g["samples"] == len(rows)
            assert g["hosts"] == len({r["host"] for r in rows})
            assert abs(g["avg_cpu"] - sum(r["cpu_pct"] for r in rows) / len(rows)) < 1e-9
            assert g["max_cpu"] == max(r["cpu_pct"] for r in rows)
            assert abs(g["avg_mem_gb"] - sum(r["mem_used_gb"] for r in rows) / len(rows)) < 1e-9
        gold = reader(proc, "gold.host_daily")

        def day(g):
            return g["day"] if isinstance(g["day"], dt.date) else dt.date.fromisoformat(str(g["day"]))

        assert sorted((g["host"], day(g)) for g in gold) == sorted(daily), reader.__name__
        for g in gold:
            rows = daily[(g["host"], day(g))]
            assert g["samples"] == len(rows)
            assert g["busy_samples"] == sum(1 for r in rows if r["cpu_pct"] > 60)
            assert abs(g["avg_cpu"] - sum(r["cpu_pct"] for r in rows) / len(rows)) < 1e-9

    return expected_quarantine
