"""The front door: README's first command runs `sluice-processor demo`, which must show the
whole product working: a scenario simulation and a WebAssembly connector with an edge
transform, shipped over QUIC, landed in bronze, refined by SQL models into silver and gold,
with the status page and a query over gold printed at the end."""

import re
import subprocess

from pyiceberg.catalog.sql import SqlCatalog

from harness import plugin_path


def test_the_demo_runs_the_whole_product_on_embedded_defaults(bins, workdir):
    out = subprocess.run(
        [str(bins.processor), "demo", "--dir", str(workdir / "demo"), "--exit",
         "--plugins", str(plugin_path("counter").parent), "--agent-bin", str(bins.agent)],
        capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for table in ("bronze.cpu", "bronze.devices", "silver.cpu", "gold.cpu_hourly", "gold.host_daily"):
        assert re.search(rf"{re.escape(table)}\s+\d+ rows", text), text
    assert re.search(r"status page: http://127\.0\.0\.1:\d+/#token=sluice_[0-9a-f]{64}", text), text
    assert "FROM gold.cpu_hourly" in text, text

    # The lake it leaves is readable by an independent reader, and holds what was shown.
    data = workdir / "demo" / "data"
    cat = SqlCatalog("sluice", uri=f"sqlite:///{data / 'catalog.db'}", warehouse=f"file://{data / 'warehouse'}")
    devices = cat.load_table("bronze.devices").scan().to_arrow()
    assert devices.num_rows == 20000
    # The edge transform ran before the rows left the agent: ids pseudonymised, site added.
    assert set(devices.column("site").to_pylist()) == {"plant-7"}
    ids = set(devices.column("device").to_pylist())
    assert len(ids) == 50 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), sorted(ids)[:3]
    cpu = cat.load_table("bronze.cpu").scan().to_arrow().num_rows
    silver = cat.load_table("silver.cpu").scan().to_arrow().num_rows
    quarantined = cat.load_table("quarantine.silver_cpu").scan().to_arrow().num_rows
    assert cpu == 24 * 6 * 360 and silver + quarantined == cpu, (cpu, silver, quarantined)
    hourly = cat.load_table("gold.cpu_hourly").scan().to_arrow()
    assert sum(hourly.column("samples").to_pylist()) == silver
