"""The same lake on real services: an S3-compatible server (s3s-fs, built from crates.io)
for the warehouse and PostgreSQL for the catalog. Bronze, the example pipeline's silver and
gold models, compaction, expiry and orphan cleanup, all read back by PyIceberg and DuckDB
straight from the object store."""

import collections
import json
import tomllib

import pytest

from harness import Agent, Postgres, Processor, S3Server, pyiceberg_table, read_duckdb, read_pyiceberg
from pipeline_example import PIPELINE, check_example_pipeline


@pytest.fixture
def services(workdir, request):
    pg = Postgres(workdir)
    request.addfinalizer(pg.close)
    return pg, S3Server(workdir)


def test_pipeline_on_s3_and_postgres(bins, certs, workdir, services):
    pg, s3 = services
    models = tomllib.loads((PIPELINE / "processor.toml").read_text())["models"]
    catalog = {"name": "sluice", "uri": pg.uri, "warehouse": f"s3://{s3.bucket}/warehouse", "s3": s3.processor_config()}
    proc = Processor(bins, certs, workdir, sections={"catalog": catalog, "models": models},
                     commit_interval="200ms", commit_max_rows=2000)
    proc.pyiceberg = {"uri": pg.sqlalchemy_uri, "warehouse": f"s3://{s3.bucket}/warehouse", **s3.pyiceberg_props()}
    proc.duckdb_setup = s3.duckdb_setup
    proc.start()
    source = {"fleet": {"type": "simulator", "scenario": str(PIPELINE / "scenario.toml"), "pace": "fast"}}
    agent = Agent(bins, certs, workdir, proc, source, batch={"max_rows": 2000, "max_age": "100ms"}).start()
    assert agent.wait(300) == 0, agent.proc.output()
    proc.wait_models(["silver.cpu", "gold.cpu_hourly", "gold.host_daily"])

    # Everything is in the bucket and the catalog is PostgreSQL: nothing on local disk.
    assert not (proc.data_dir / "warehouse").exists()
    assert not (proc.data_dir / "catalog.db").exists()
    objects = [p for p in (s3.root / s3.bucket / "warehouse").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in objects) and any(p.suffix == ".avro" for p in objects)

    expected_quarantine = check_example_pipeline(proc, ["edge-01"])
    assert all(rule == "cpu_in_range" for (_, rule) in expected_quarantine)

    # Compaction on the object store: bronze's many small files become one, same rows.
    bronze = pyiceberg_table(proc, "bronze.cpu")
    files_before = len(bronze.inspect.files())
    assert files_before >= 3, files_before
    before = collections.Counter((r["host"], r["ts"], r["cpu_pct"]) for r in read_pyiceberg(proc, "bronze.cpu"))
    r = proc.cli("maintain", "compact", "--table", "bronze.cpu", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)[0]
    assert report["files_after"] == 1 and report["rows_rewritten"] == 51_840
    bronze = pyiceberg_table(proc, "bronze.cpu")
    assert len(bronze.inspect.files()) == 1
    assert bronze.current_snapshot().summary.operation.value == "replace"
    for reader in (read_pyiceberg, read_duckdb):
        got = collections.Counter((r["host"], r["ts"], r["cpu_pct"]) for r in reader(proc, "bronze.cpu"))
        assert got == before, reader.__name__

    # Expire all but the current snapshot: the files only the expired ones used go with
    # them, so orphan cleanup finds nothing left over.
    r = proc.cli("maintain", "expire", "--table", "bronze.cpu", "--older-than", "0s", "--retain-last", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["files_removed"] >= files_before, r.stdout
    parquet_after = list((s3.root / s3.bucket / "warehouse" / "bronze" / "cpu").rglob("*.parquet"))
    assert len(parquet_after) == 1, parquet_after
    r = proc.cli("maintain", "orphans", "--table", "bronze.cpu", "--older-than", "0s", "--json")
    assert r.returncode == 0, r.stderr
    orphans = json.loads(r.stdout)[0]
    assert orphans["deleted"] == 0, orphans
    got = collections.Counter((r["host"], r["ts"], r["cpu_pct"]) for r in read_duckdb(proc, "bronze.cpu"))
    assert got == before
