"""Every sluice:plugin@0.2.0 type, nested ones included, through a Rust connector (typed
columns and JSON lines), a Python one and a JavaScript one into Iceberg, read back by
PyIceberg and DuckDB with each value checked; a connector upgraded to wider types; and a
0.1.0 transform between a 0.1.0 source and the lake."""

import datetime
import decimal

from harness import (Agent, Processor, plugin_path, pyiceberg_table, read_duckdb, read_pyiceberg,
                     wait_until)

N = 50
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def expected(i: int) -> dict:
    """Row i of the all-types connectors, computed independently of them."""
    at = START + datetime.timedelta(seconds=i)
    return {
        "i": i,
        "small": 7 * i - 100,
        "ratio": None if i % 5 == 0 else i / 4,
        "day": (START + datetime.timedelta(days=i)).date(),
        "price": decimal.Decimal(f"{i}.05"),
        "blob": bytes([i % 256, 3 * i % 256]),
        "local": at.replace(tzinfo=None),
        "utc": at + datetime.timedelta(microseconds=500_000),
        "tags": [f"t{k}" for k in range(i % 3)],
        "labels": {"a": i, "b": 2 * i} if i % 2 == 0 else {},
        "point": {"x": i / 2, "y": -i},
    }


def normalized(row: dict) -> dict:
    """A row as read back, in the shapes of `expected` (readers differ in how they give
    maps, timestamps and binary values)."""
    out = {k: row[k] for k in expected(0)}
    labels = out["labels"] or {}
    if isinstance(labels, list):  # PyArrow: a list of (key, value) pairs
        labels = dict(labels)
    elif set(labels) == {"key", "value"} and isinstance(labels["key"], list):  # DuckDB
        labels = dict(zip(labels["key"], labels["value"]))
    out["labels"] = dict(labels)
    out["blob"] = bytes(out["blob"])
    if isinstance(out["utc"], datetime.datetime) and out["utc"].tzinfo is None:
        out["utc"] = out["utc"].replace(tzinfo=datetime.timezone.utc)
    out["utc"] = out["utc"].astimezone(datetime.timezone.utc)
    out["tags"] = list(out["tags"])
    out["point"] = dict(out["point"])
    return out


def source(plugin: str, **config) -> dict:
    return {"type": "wasm", "plugin": str(plugin_path(plugin)), "max_rows": 16,
            "poll_interval": "20ms", "config": {"total": N, **config}}


def test_a_connector_upgraded_to_wider_types_widens_its_columns(bins, certs, workdir):
    """int → long and float → double: the columns widen in place (old rows keep their
    values), in one schema change, and each row lands once."""
    proc = Processor(bins, certs, workdir).start()
    try:
        for total, wide in ((20, False), (N, True)):
            agent = Agent(bins, certs, workdir, proc,
                          {"widen": source("all_types", total=total, wide=wide)}).start()
            assert agent.wait(120) == 0, agent.proc.output()[-3000:]
            types = {f.name: str(f.field_type) for f in pyiceberg_table(proc, "bronze.widen").schema().fields}
            assert (types["small"], types["ratio"]) == (("long", "double") if wide else ("int", "float"))
        table = pyiceberg_table(proc, "bronze.widen")
        assert len(table.schemas()) == 2
        assert proc.metrics()['sluice_processor_schema_changes_total{table="bronze.widen"}'] == 1
        want = [expected(i) for i in range(N)]
        for read in (read_pyiceberg, read_duckdb):
            rows = sorted((normalized(r) for r in read(proc, "bronze.widen")), key=lambda r: r["i"])
            assert rows == want, read.__name__
    finally:
        proc.stop()


def test_every_type_round_trips_through_rust_python_and_javascript_connectors(bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    try:
        streams = {
            "rust_typed": source("all_types", mode="columns"),
            "rust_json": source("all_types", mode="json"),
            "python_types": source("python_all_types"),
            "js_types": source("js_all-types"),
        }
        agent = Agent(bins, certs, workdir, proc, streams).start()
        assert agent.wait(180) == 0, agent.proc.output()[-3000:]
        want = [expected(i) for i in range(N)]
        for stream in streams:
            table = f"bronze.{stream}"
            schema = pyiceberg_table(proc, table).schema()
            types = {f.name: str(f.field_type) for f in schema.fields}
            assert types["small"] == "int" and types["ratio"] == "float", types
            assert types["day"] == "date" and types["price"] == "decimal(9, 2)", types
            assert types["blob"] == "binary" and types["local"] == "timestamp", types
            assert types["utc"] == "timestamptz", types
            assert types["tags"].startswith("list<string"), types
            assert types["labels"].startswith("map<string, int"), types
            assert types["point"].startswith("struct<"), types
            for read in (read_pyiceberg, read_duckdb):
                rows = sorted((normalized(r) for r in read(proc, table)), key=lambda r: r["i"])
                assert rows == want, f"{table} read by {read.__name__}: {rows[:2]} vs {want[:2]}"
    finally:
        proc.stop()


def test_a_transform_built_against_0_1_0_still_runs_between_a_0_1_0_source_and_the_lake(
        bins, certs, workdir):
    """The Python sensors (a 0.1.0 source) through a 0.1.0 transform built with wit-bindgen
    alone: every row lands once with the transform's column. A 0.2.0 source whose columns
    0.1.0 cannot express is refused at the transform's open, with the column named."""
    proc = Processor(bins, certs, workdir).start()
    try:
        tag = {"type": "wasm", "plugin": str(plugin_path("compat_v01_tag")), "config": {"tag": "site-7"}}
        sensors = {"type": "wasm", "plugin": str(plugin_path("python_sensors")), "max_rows": 64,
                   "poll_interval": "20ms", "config": {"total": 500}, "transforms": ["tag"]}
        agent = Agent(bins, certs, workdir, proc, {"tagged": sensors}, transforms={"tag": tag}).start()
        assert agent.wait(180) == 0, agent.proc.output()[-3000:]
        for read in (read_pyiceberg, read_duckdb):
            rows = read(proc, "bronze.tagged")
            assert sorted(r["seq"] for r in rows) == list(range(500)), read.__name__
            assert {r["tag"] for r in rows} == {"site-7"}, read.__name__

        # The transform fails for good on its first refusal; the agent keeps running.
        wide = {**source("all_types"), "transforms": ["tag"]}
        agent = Agent(bins, certs, workdir, proc, {"wide": wide},
                      transforms={"tag": {**tag, "max_failures": 1}}).start().wait_api()
        try:
            failed = 'sluice_agent_plugin_failures_total{plugin="wide/tag",reason="plugin_error"}'
            wait_until(lambda: agent.metrics().get(failed, 0) >= 1, 60, "the transform refused")
            assert agent.proc.alive(), "the agent keeps running"
            out = agent.proc.output()
            assert 'column "small" has type int32' in out and "0.1.0" in out, out[-3000:]
        finally:
            agent.proc.kill()
    finally:
        proc.stop()
