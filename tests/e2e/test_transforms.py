"""Edge transforms (the `transform` world): rows reshaped before they leave the host, and
transforms that fail must lose nothing (or, when told to drop, drop exactly what they say)."""

import time

from harness import Agent, Processor, plugin_path, read_duckdb, read_pyiceberg, run, write_toml
from test_wasm import counter, expected_counter_row

SALT = "site-7-secret"


def fnv1a64(salt: str, value: str) -> str:
    """The redact example's pseudonym, computed independently."""
    h = 0xCBF29CE484222325
    for b in (salt + value).encode():
        h ^= b
        h = (h * 0x100000001B3) % (1 << 64)
    return f"{h:016x}"


def scrub() -> dict:
    return {
        "type": "wasm",
        "plugin": str(plugin_path("redact")),
        "config": {
            "keep": [{"column": "ok", "op": "==", "value": True}],
            "hash": ["device"],
            "salt": SALT,
            "drop": ["ok"],
            "add": {"site": "plant-7"},
        },
    }


def check_scrubbed(rows: list[dict], upto: int) -> None:
    """Rows of counter seq 0..upto after `scrub`: every row with ok kept once, none other."""
    want = [i for i in range(upto) if expected_counter_row(i)["ok"]]
    by_seq = {r["seq"]: r for r in rows}
    assert len(rows) == len(by_seq) == len(want), (len(rows), len(by_seq), len(want))
    assert sorted(by_seq) == want
    for i in want[:: max(1, len(want) // 300)] + [want[-1]]:
        exp, got = expected_counter_row(i), by_seq[i]
        assert got["device"] == fnv1a64(SALT, exp["device"]), i
        assert got["temp"] == exp["temp"] and got["site"] == "plant-7", i
        assert "ok" not in got
    assert not any(r["device"].startswith("dev-") for r in rows), "a raw device id left the host"


def test_redact_transform_filters_pseudonymises_and_enriches(bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    try:
        agent = Agent(bins, certs, workdir, proc,
                      {"plant": counter(total=30_000, transforms=["scrub"])},
                      transforms={"scrub": scrub()}).start()
        assert agent.wait(180) == 0, agent.proc.output()
        check_scrubbed(read_pyiceberg(proc, "bronze.plant"), 30_000)
        check_scrubbed(read_duckdb(proc, "bronze.plant"), 30_000)

        # The source's checkpoint travels through the transform: a restarted agent with a
        # larger total resumes after the last committed input row, nothing twice.
        again = Agent(bins, certs, workdir, proc,
                      {"plant": counter(total=45_000, transforms=["scrub"])},
                      transforms={"scrub": scrub()}).start().wait_api()
        assert again.wait(180) == 0, again.proc.output()
        check_scrubbed(read_pyiceberg(proc, "bronze.plant"), 45_000)
    finally:
        proc.stop()


def test_transform_metrics_count_rows_in_and_out(bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        agent = Agent(bins, certs, workdir, proc,
                      {"plant": counter(total=20_000, transforms=["scrub"]), "keepalive": counter()},
                      transforms={"scrub": scrub()}).start().wait_api()
        deadline = time.time() + 120
        while time.time() < deadline:
            m = agent.metrics()
            if m.get('sluice_agent_acked_rows_total{stream="plant"}', 0) >= 18_000:
                break
            time.sleep(0.2)
        m = agent.metrics()
        assert m['sluice_agent_transform_input_rows_total{plugin="plant/scrub"}'] == 20_000
        assert m['sluice_agent_transform_output_rows_total{plugin="plant/scrub"}'] == 18_000
        assert m['sluice_agent_acked_rows_total{stream="plant"}'] == 18_000
        assert m['sluice_agent_plugin_call_duration_seconds_count{plugin="plant/scrub"}'] >= 5
        assert agent.proc.stop(timeout=60) == 0, agent.proc.output()
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()


def flaky(mode: str, every: int, **extra) -> dict:
    return {
        "type": "wasm",
        "plugin": str(plugin_path("hostile_flaky_transform")),
        "call_timeout": "200ms",
        "memory_limit": "32MiB",
        "restart_backoff_initial": "20ms",
        "restart_backoff_max": "50ms",
        "max_failures": 1000,
        **extra,
        "config": {"mode": mode, "every": every},
    }


RETRY_MODES = {
    # mode: failure reason in metrics
    "trap": "trap",
    "spin": "timeout",
    "memory": "memory",
    "error": "plugin_error",
    "bad_batch": "bad_batch",
}


def test_failing_transforms_lose_nothing_or_drop_exactly_what_they_count(bins, certs, workdir):
    total, chunk = 20_000, 1000
    sources = {mode: counter(total=total, max_rows=chunk, transforms=[mode]) for mode in RETRY_MODES}
    transforms = {mode: flaky(mode, every=3) for mode in RETRY_MODES}
    # Fails on every 4th call of an instance and drops that batch: 1000-row chunks 4, 8, ...
    sources["dropping"] = counter(total=total, max_rows=chunk, transforms=["dropper"])
    transforms["dropper"] = flaky("error", every=4, on_error="drop")
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        agent = Agent(bins, certs, workdir, proc, sources, transforms=transforms).start().wait_api()
        assert agent.wait(300) == 0, agent.proc.output()
        for mode in RETRY_MODES:
            rows = read_pyiceberg(proc, f"bronze.{mode}")
            assert sorted(r["seq"] for r in rows) == list(range(total)), mode
        dropped = {i for k in range(3, total // chunk, 4) for i in range(k * chunk, (k + 1) * chunk)}
        rows = read_pyiceberg(proc, "bronze.dropping")
        assert sorted(r["seq"] for r in rows) == sorted(set(range(total)) - dropped)

        log = agent.proc.output()
        assert "deliberate panic in apply" in log and "time budget of 200ms exceeded in apply()" in log
        assert "memory cap of 32 MiB exceeded in apply()" in log
        assert "dropping the batch" in log and "retrying the batch" in log
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()


def test_failures_are_counted_by_reason(bins, certs, workdir):
    """The same failures seen through /metrics while the agent runs."""
    sources = {mode: counter(total=6000, max_rows=1000, transforms=[mode]) for mode in RETRY_MODES}
    sources["dropping"] = counter(total=8000, max_rows=1000, transforms=["dropper"])
    transforms = {mode: flaky(mode, every=3) for mode in RETRY_MODES}
    transforms["dropper"] = flaky("error", every=4, on_error="drop")
    sources["keepalive"] = counter()
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        agent = Agent(bins, certs, workdir, proc, sources, transforms=transforms).start().wait_api()
        deadline = time.time() + 120
        want = {f'sluice_agent_acked_rows_total{{stream="{m}"}}': 6000 for m in RETRY_MODES}
        want['sluice_agent_acked_rows_total{stream="dropping"}'] = 6000
        while time.time() < deadline:
            m = agent.metrics()
            if all(m.get(k, 0) >= v for k, v in want.items()):
                break
            time.sleep(0.3)
        m = agent.metrics()
        for k, v in want.items():
            assert m.get(k) == v, (k, m.get(k))
        for mode, reason in RETRY_MODES.items():
            # 6 chunks, failing on each instance's 3rd call: chunks 3 and 5 fail once each.
            assert m.get(f'sluice_agent_plugin_failures_total{{plugin="{mode}/{mode}",reason="{reason}"}}') == 2, mode
            assert m.get(f'sluice_agent_plugin_restarts_total{{plugin="{mode}/{mode}"}}') == 2, mode
        assert m.get('sluice_agent_lost_rows_total{stream="dropping",reason="transform_plugin_error"}') == 2000
        assert agent.health()[0] == 200
        assert agent.proc.stop(timeout=60) == 0, agent.proc.output()
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()


def test_broken_transform_is_given_up_holds_its_source_and_loses_nothing(bins, certs, workdir):
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        agent = Agent(bins, certs, workdir, proc, {
            "held": counter(total=5000, max_rows=1000, transforms=["broken"]),
            "healthy": counter(max_rows=2000),
        }, transforms={"broken": flaky("trap", every=1, max_failures=3)}).start().wait_api()
        deadline = time.time() + 60
        while time.time() < deadline and agent.health()[0] != 503:
            assert agent.proc.alive(), agent.proc.output()
            time.sleep(0.2)
        status, body = agent.health()
        assert status == 503, body
        assert 'plugin "held/broken" failed' in body and "deliberate panic in apply #1" in body, body
        m = agent.metrics()
        assert m.get('sluice_agent_plugin_failed{plugin="held/broken"}') == 1
        assert m.get('sluice_agent_plugin_failures_total{plugin="held/broken",reason="trap"}') == 3
        assert m.get('sluice_agent_acked_rows_total{stream="held"}', 0) == 0
        # The other source keeps flowing beside the held one.
        flowing = m.get('sluice_agent_acked_rows_total{stream="healthy"}', 0)
        time.sleep(1.5)
        assert agent.metrics().get('sluice_agent_acked_rows_total{stream="healthy"}', 0) > flowing
        # Stopping does not hang on the held source; the exit status reports the failure.
        assert agent.proc.stop(timeout=60) == 1, agent.proc.output()
        assert "finished unhealthy" in agent.proc.output()

        # Fixed (a transform that no longer fails), the held source starts from the lake's
        # checkpoint, which is before its first row: every row lands, once.
        fixed = Agent(bins, certs, workdir, proc, {
            "held": counter(total=5000, max_rows=1000, transforms=["broken"]),
        }, transforms={"broken": flaky("trap", every=1_000_000)}).start()
        assert fixed.wait(120) == 0, fixed.proc.output()
        rows = read_pyiceberg(proc, "bronze.held")
        assert sorted(r["seq"] for r in rows) == list(range(5000))
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()


def test_transform_config_errors(bins, workdir):
    base = {
        "agent": {"id": "edge-01"},
        "sink": {"type": "quic", "endpoint": "127.0.0.1:1", "ca": "a", "cert": "b", "key": "c"},
    }
    cases = [
        # (sources, transforms, words stderr must hold)
        ({"s": counter(total=10, transforms=["nope"])}, {},
         ["sources.s.transforms", 'no transform named "nope"']),
        ({"s": counter(total=10, transforms=["t"])}, {"t": {**scrub(), "on_error": "ignore"}},
         ["transforms", "t", "on_error", "ignore"]),
        ({"s": counter(total=10, transforms=["t", "t"])}, {"t": scrub()},
         ['"t" is listed twice']),
        ({"s": counter(total=10, transforms=["t"])},
         {"t": {**scrub(), "plugin": str(plugin_path("counter"))}},
         ["transforms.t.plugin", "is a source, not a transform"]),
        # A simulator's schema is known before it runs, so the transform is opened with it.
        ({"s": {"type": "simulator", "total": 10, "transforms": ["t"],
                "fields": {"v": {"type": "uniform", "min": 0.0, "max": 1.0}}}},
         {"t": {**scrub(), "config": {"hash": ["nosuch"]}}},
         ["transforms.t.plugin", 'hash/mask: no input column named "nosuch"']),
    ]
    for i, (sources, transforms, needles) in enumerate(cases):
        path = workdir / f"t{i}.toml"
        write_toml(path, {**base, "sources": sources, "transforms": transforms})
        r = run([str(bins.agent), "validate", "--config", str(path)])
        assert r.returncode != 0, (i, r.stdout)
        for n in needles:
            assert n in r.stderr, (i, n, r.stderr)


def test_validate_shows_the_schema_after_transforms(bins, workdir):
    cfg = {
        "agent": {"id": "edge-01"},
        "sink": {"type": "quic", "endpoint": "127.0.0.1:1", "ca": "a", "cert": "b", "key": "c"},
        "sources": {"sim": {
            "type": "simulator", "total": 10, "transforms": ["scrub"],
            "fields": {"ts": {"type": "timestamp"}, "host": {"type": "fake", "fake": "hostname"},
                       "ok": {"type": "choice", "values": [True, False]}},
        }},
        "transforms": {"scrub": {"type": "wasm", "plugin": str(plugin_path("redact")),
                                 "config": {"hash": ["host"], "drop": ["ok"], "add": {"site": "x"}}}},
    }
    path = workdir / "v.toml"
    write_toml(path, cfg)
    r = run([str(bins.agent), "validate", "--config", str(path)])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "| transform scrub" in out and "site: Utf8" in out and "host: Utf8" in out, out
    assert "ok: Boolean" not in out, out
