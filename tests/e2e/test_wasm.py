"""WebAssembly connectors, built from source in plugins/, landing in bronze; and hostile
plugins that must not hurt the agent or the healthy connectors beside them."""

import hashlib
import os
import subprocess
import time

from harness import Agent, Processor, plugin_path, read_duckdb, read_pyiceberg, wait_until, write_toml

START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, as in plugins/examples/counter


def expected_counter_row(i: int, devices: int = 100) -> dict:
    """The counter connector's row i, computed independently of the plugin."""
    temp = None if i % 97 == 0 else 20.0 + ((i * 7919) % 1000) / 100.0
    return {"ts_us": START_US + i * 1000, "seq": i, "device": f"dev-{i % devices:04d}",
            "temp": temp, "ok": i % 10 != 0}


def counter(total=None, mode="columns", **extra) -> dict:
    cfg = {"mode": mode, "devices": 100}
    if total is not None:
        cfg["total"] = total
    return {"type": "wasm", "plugin": str(plugin_path("counter")), "max_rows": 4096,
            "poll_interval": "20ms", **extra, "config": cfg}


def check_counter_rows(rows: list[dict], n: int) -> None:
    assert len(rows) == n
    by_seq = {r["seq"]: r for r in rows}
    assert sorted(by_seq) == list(range(n)), "each row exactly once"
    for i in list(range(0, n, max(1, n // 500))) + [n - 1, 97, 194]:
        want, got = expected_counter_row(i), by_seq[i]
        ts = got["ts"]
        got_us = int(ts.timestamp() * 1_000_000) if hasattr(ts, "timestamp") else ts
        assert got_us == want["ts_us"], i
        assert (got["device"], got["temp"], got["ok"]) == (want["device"], want["temp"], want["ok"]), i


def test_typed_and_json_connectors_land_in_bronze(bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    try:
        agent = Agent(bins, certs, workdir, proc, {
            "typed": counter(total=30_000, mode="columns"),
            "jsonl": counter(total=20_000, mode="json"),
        }, data_dir=workdir / "agent-data").start()
        assert agent.wait(180) == 0, agent.proc.output()
        check_counter_rows(read_pyiceberg(proc, "bronze.typed"), 30_000)
        check_counter_rows(read_duckdb(proc, "bronze.jsonl"), 20_000)
        # Compiled once, cached by content hash: another agent start does not recompile.
        digest = hashlib.sha256(plugin_path("counter").read_bytes()).hexdigest()
        cached = list((workdir / "agent-data" / "wasm-cache").glob(f"{digest}-*.cwasm"))
        assert len(cached) == 1, cached
        again = Agent(bins, certs, workdir, proc, {"again": counter(total=10)}, agent_id="edge-02",
                      data_dir=workdir / "agent-data").start()
        assert again.wait(60) == 0, again.proc.output()
        assert "from_cache=true" in again.proc.output()
    finally:
        proc.stop()


HOSTILE = {
    # name: (component, expected failure reason, words the error names)
    "spin": ("hostile_spin", "timeout", "time budget"),
    "membomb": ("hostile_membomb", "memory", "memory cap of 32 MiB"),
    "trap": ("hostile_trap", "trap", "deliberate panic"),
    "wrongschema": ("hostile_wrong_schema", "bad_batch", "1 columns but the plugin declared 2"),
    # Its bad batch carries a checkpoint; resumed past it, its open fails another way.
    "badjson": ("hostile_bad_json", "bad_batch", "invalid JSON lines"),
    "snoop": ("hostile_snoop", "plugin_error", "cannot read /etc/hostname"),
    # Granted /proc/stat only: the agent's environment (its secrets) stays out of reach.
    "environ": ("hostile_snoop", "plugin_error", "cannot read /proc/self/environ"),
    # Reads a FIFO nobody writes: stuck in the host, where the epoch cannot stop it.
    "blocked": ("hostile_snoop", "blocked", "blocked in a host call"),
}


def test_hostile_plugins_fail_alone(bins, certs, workdir):
    limits = {"call_timeout": "300ms", "memory_limit": "32MiB", "restart_backoff_initial": "100ms",
              "restart_backoff_max": "200ms", "max_failures": 3, "failure_window": "1m", "poll_interval": "20ms"}
    sources = {"healthy": counter(mode="columns", max_rows=2000)}
    fifo_dir = workdir / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "never-written")
    for name, (component, _, _) in HOSTILE.items():
        src = {"type": "wasm", "plugin": str(plugin_path(component)), **limits}
        if name == "snoop":
            src["config"] = {"path": "/etc/hostname"}
        if name == "environ":
            src["allow_files"] = ["/proc/stat"]
            src["config"] = {"path": "/proc/self/environ"}
        if name == "blocked":
            src["allow_dirs"] = [str(fifo_dir)]
            src["config"] = {"path": str(fifo_dir / "never-written")}
        sources[name] = src
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, sources).start().wait_api()
    try:
        # Every hostile plugin fails 3 times, then is given up on; the agent stays up.
        deadline = time.time() + 120
        while time.time() < deadline:
            m = agent.metrics()
            if all(m.get(f'sluice_agent_plugin_failed{{plugin="{n}"}}', 0) == 1 for n in HOSTILE):
                break
            assert agent.proc.alive(), agent.proc.output()
            time.sleep(0.5)
        m = agent.metrics()
        for name, (_, reason, _) in HOSTILE.items():
            assert m.get(f'sluice_agent_plugin_failed{{plugin="{name}"}}') == 1, name
            assert m.get(f'sluice_agent_plugin_failures_total{{plugin="{name}",reason="{reason}"}}') == 3, \
                (name, {k: v for k, v in m.items() if name in k})
            assert m.get(f'sluice_agent_plugin_restarts_total{{plugin="{name}"}}') == 2, name
        assert m.get('sluice_agent_plugin_failed{plugin="healthy"}', 0) == 0

        status, body = agent.health()
        assert status == 503, body
        log = agent.proc.output()
        for name, (_, _, words) in HOSTILE.items():
            assert f'plugin "{name}" failed' in body, body
            assert words in body, (name, body)
            assert words in log, (name, words)

        # The healthy connector kept flowing the whole time.
        flowing = m.get('sluice_agent_acked_rows_total{stream="healthy"}', 0)
        time.sleep(1.5)
        assert agent.metrics().get('sluice_agent_acked_rows_total{stream="healthy"}', 0) > flowing
        # Stopping drains what was buffered; the exit status reports the failed plugins.
        assert agent.proc.stop(timeout=60) == 1, agent.proc.output()
        assert "finished unhealthy" in agent.proc.output()

        # Every row the healthy connector produced landed exactly once.
        rows = read_pyiceberg(proc, "bronze.healthy")
        check_counter_rows(rows, len(rows))
        assert len(rows) > 10_000
        # The trap plugin's good batches (2 per instance, 3 rows each) landed too.
        assert len(read_pyiceberg(proc, "bronze.trap")) == 3 * 2 * 3
    finally:
        if agent.proc:
            agent.proc.kill()
        proc.stop()


def write_log(path, first: int, n: int) -> None:
    with open(path, "a") as f:
        for i in range(first, first + n):
            if i % 1000 == 999:
                f.write(f"unstructured line {i} without a timestamp\n")
            else:
                level = ("INFO", "WARN", "ERROR")[i % 3]
                f.write(f"2026-01-01T00:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z {level} request {i} done\n")


def expected_log_rows(path) -> dict[int, str]:
    rows, pos = {}, 0
    with open(path, "rb") as f:
        for line in f:
            rows[pos] = line.decode().rstrip("\n")
            pos += len(line)
    return rows


def test_file_tail_resumes_exactly_after_agent_kill(bins, certs, workdir):
    logs = workdir / "logs"
    logs.mkdir()
    log = logs / "app.log"
    write_log(log, 0, 300_000)
    source = {"type": "wasm", "plugin": str(plugin_path("file_tail")), "allow_dirs": [str(logs)],
              "max_rows": 1000, "poll_interval": "50ms", "config": {"path": str(log)}}
    committed = 'sluice_processor_committed_rows_total{table="bronze.tail"}'
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, {"tail": source}).start()
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.metrics().get(committed, 0) == 0:
            time.sleep(0.05)
        at_kill = proc.metrics().get(committed, 0)
        agent.proc.kill()
        assert 0 < at_kill < 300_000, f"the kill must land mid-file ({at_kill} rows committed)"

        # Restart, and keep writing while it catches up.
        agent = Agent(bins, certs, workdir, proc, {"tail": source}).start()
        write_log(log, 300_000, 50_000)
        total = 350_000
        deadline = time.time() + 180
        while time.time() < deadline and proc.metrics().get(committed, 0) < total:
            assert agent.proc.alive(), agent.proc.output()
            time.sleep(0.2)
        time.sleep(1.0)  # nothing more may arrive
        assert agent.proc.stop(timeout=60) == 0, agent.proc.output()
        assert "resuming from the stored checkpoint" in agent.proc.output()

        rows = read_pyiceberg(proc, "bronze.tail")
        want = expected_log_rows(log)
        offsets = [r["offset"] for r in rows]
        assert len(offsets) == len(set(offsets)), f"{len(offsets) - len(set(offsets))} lines landed twice"
        assert set(offsets) == set(want), f"{len(set(want) - set(offsets))} lines lost"
        for r in rows[:: len(rows) // 300]:
            line = want[r["offset"]]
            if line.startswith("unstructured"):
                assert (r["message"], r["level"], r["ts"]) == (line, None, None)
            else:
                ts, level, message = line.split(" ", 2)
                assert (r["level"], r["message"]) == (level, message)
                assert r["ts"].isoformat().replace("+00:00", "Z").startswith(ts[:19])
    finally:
        if agent.proc:
            agent.proc.kill()
        proc.stop()


HOST_FILES = ["/proc/stat", "/proc/meminfo", "/proc/loadavg", "/proc/sys/kernel/hostname"]


def test_host_metrics_reads_only_its_granted_files(bins, certs, workdir):
    metrics = {"type": "wasm", "plugin": str(plugin_path("host_metrics")), "allow_files": HOST_FILES,
               "poll_interval": "20ms", "config": {"interval_ms": 100}}
    denied = {"type": "wasm", "plugin": str(plugin_path("host_metrics")), "max_failures": 1,
              "config": {"interval_ms": 100}}
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, {"hostm": metrics, "nogrant": denied}).start().wait_api()
    try:
        deadline = time.time() + 90  # includes compiling the component in a debug build
        while time.time() < deadline:
            m = agent.metrics()
            if m.get('sluice_agent_plugin_failed{plugin="nogrant"}') == 1 and \
                    m.get('sluice_agent_source_rows_total{source="hostm"}', 0) >= 12:
                break
            time.sleep(0.2)
        status, body = agent.health()
        assert status == 503 and 'plugin "nogrant" failed' in body and "granted with allow_files" in body, body
        assert agent.proc.stop(timeout=60) == 1, agent.proc.output()
        assert 'plugin "nogrant" failed' in agent.proc.output()
        rows = read_duckdb(proc, "bronze.hostm")
        assert len(rows) >= 10, len(rows)
        mem_total = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal:")).split()[1])
        host = open("/proc/sys/kernel/hostname").read().strip()
        for r in rows:
            assert r["host"] == host and r["mem_total_kb"] == mem_total
            assert 0 < r["mem_available_kb"] <= mem_total
            shares = r["cpu_user"] + r["cpu_system"] + r["cpu_idle"]
            assert all(0 <= r[k] <= 1 for k in ("cpu_user", "cpu_system", "cpu_idle")) and shares <= 1.0001
            assert min(r["load1"], r["load5"], r["load15"]) >= 0
        stamps = sorted(r["ts"] for r in rows)
        gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
        assert min(gaps) >= 0.09, "one sample per interval"
    finally:
        if agent.proc:
            agent.proc.kill()
        proc.stop()


def test_the_agents_own_process_cannot_be_granted(bins, workdir):
    """Granting /proc (or /, or a process's files) would hand a plugin /proc/self/mem and
    /proc/self/environ: the agent's memory, keys and secrets. The config is refused."""
    for grant in [{"allow_dirs": ["/proc"]}, {"allow_dirs": ["/"]}, {"allow_files": ["/proc/self/environ"]},
                  {"allow_files": [f"/proc/{os.getpid()}/mem"]}]:
        config = workdir / "agent.toml"
        write_toml(config, {
            "agent": {"id": "edge-01", "data_dir": str(workdir / "data")},
            "sink": {"type": "quic", "endpoint": "127.0.0.1:1", "server_name": "localhost", "ca": "ca.pem",
                     "cert": "a.pem", "key": "a.key"},
            "sources": {"snoop": {"type": "wasm", "plugin": str(plugin_path("hostile_snoop")), **grant}},
        })
        r = subprocess.run([str(bins.agent), "validate", "--config", str(config)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode != 0, (grant, r.stdout)
        assert "sources.snoop.allow_" in r.stderr and ("agent's own process" in r.stderr
                                                      or "belongs to a process" in r.stderr), r.stderr


def test_a_plugin_flooding_the_log_is_cut_to_the_rate(bins, certs, workdir):
    """A plugin logging 20,000 lines of 10 KB per poll: the agent logs at most the burst and
    the rate, each line cut to 4 KiB, says how many it dropped, and the rows still land."""
    proc = Processor(bins, certs, workdir).start()
    flood = {"type": "wasm", "plugin": str(plugin_path("hostile_logflood")), "poll_interval": "20ms",
             "call_timeout": "10s"}
    agent = Agent(bins, certs, workdir, proc, {"flood": flood}).start().wait_api()
    try:
        started = time.time()
        wait_until(lambda: agent.metrics().get('sluice_agent_acked_rows_total{stream="flood"}', 0) >= 5, 120,
                   "five polls to land")
        elapsed = time.time() - started
        log = agent.proc.output()
        lines = [line for line in log.splitlines() if "xxxxxxxxxx" in line]
        # 1,000 at once, then 100 a second (and a margin for the clock).
        assert 0 < len(lines) <= 1_000 + 100 * (elapsed + 10), (len(lines), elapsed)
        assert all(len(line) < 4096 + 400 for line in lines), max(map(len, lines))
        assert "more bytes cut" in lines[0]
        assert "log lines dropped" in log
    finally:
        agent.proc.kill()
        proc.stop()


def expected_sensor_row(i: int, sensors: int = 10) -> dict:
    """Row i of the Python and JavaScript example connectors, computed independently."""
    return {"ts_us": START_US + i * 1_000_000, "seq": i, "sensor": f"s-{i % sensors:03d}",
            "reading": None if i % 50 == 0 else (i * 37 % 1000) / 10}


def test_python_and_javascript_connectors_land_in_bronze(bins, certs, workdir):
    def src(component, total):
        return {"type": "wasm", "plugin": str(plugin_path(component)), "memory_limit": "256MiB",
                "call_timeout": "10s", "max_rows": 2000, "config": {"total": total, "sensors": 10}}

    proc = Processor(bins, certs, workdir).start()
    try:
        agent = Agent(bins, certs, workdir, proc, {
            "py_sensors": src("python_sensors", 12_000),  # JSON lines
            "js_sensors": src("js_sensors", 15_000),  # typed columns
        }).start()
        assert agent.wait(300) == 0, agent.proc.output()
        log = agent.proc.output()
        assert "python sensors starting at row 0" in log and "js sensors starting at row 0" in log
        for table, n, reader in (("bronze.py_sensors", 12_000, read_pyiceberg),
                                 ("bronze.js_sensors", 15_000, read_duckdb)):
            rows = reader(proc, table)
            assert sorted(r["seq"] for r in rows) == list(range(n)), table
            for r in rows:
                want = expected_sensor_row(r["seq"])
                ts = r["ts"]
                assert int(ts.timestamp()) * 1_000_000 == want["ts_us"], (table, r)
                assert (r["sensor"], r["reading"]) == (want["sensor"], want["reading"]), (table, r)
    finally:
        proc.stop()
