"""Malformed configs are refused with an error that names the key."""

from harness import Processor, run, write_toml


def test_agent_config_errors_name_the_key(bins, certs, workdir):
    base = {
        "agent": {"id": "edge-01"},
        "sink": {"type": "quic", "endpoint": "127.0.0.1:1", "ca": "a", "cert": "b", "key": "c"},
        "sources": {"s": {"type": "simulator", "fields": {"v": {"type": "uniform", "min": 0.0, "max": 1.0}}}},
    }
    cases = [
        (lambda c: c["sink"].update(windw=3), ["windw", "line"]),
        (lambda c: c["sources"]["s"].update(rate="fast"), ["rate", "expected f64"]),
        (lambda c: c["sources"]["s"]["fields"].update(x={"type": "normal", "mean": 1.0, "stddev": -2.0}),
         ["sources.s.fields.x", "stddev"]),
        (lambda c: c["sources"]["s"]["fields"].update(x={"type": "dice"}), ["unknown variant `dice`"]),
        (lambda c: c["agent"].update(id="no spaces"), ["agent.id"]),
        (lambda c: c.update(batch={"max_age": "whenever"}), ["max_age"]),
    ]
    for i, (mutate, needles) in enumerate(cases):
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
        cfg["sources"] = {"s": {**base["sources"]["s"], "fields": dict(base["sources"]["s"]["fields"])}}
        cfg["sink"] = dict(base["sink"])
        mutate(cfg)
        path = workdir / f"bad{i}.toml"
        write_toml(path, cfg)
        for sub in ("validate", "run"):
            r = run([str(bins.agent), sub, "--config", str(path)])
            assert r.returncode != 0
            for needle in needles:
                assert needle in r.stderr, f"case {i} ({sub}): {needle!r} not in {r.stderr!r}"
            assert str(path) in r.stderr


def test_processor_config_errors_name_the_key(bins, certs, workdir):
    proc = Processor(bins, certs, workdir)
    text = proc.config.read_text()
    for i, (bad, needle) in enumerate([
        (text.replace("[lander]", "[lander]\ncommit_every = \"1s\""), "commit_every"),
        (text.replace('commit_interval = "300ms"', 'commit_interval = "now"'), "commit_interval"),
        (text.replace("[quic]", "[quic]\nport = 1"), "port"),
    ]):
        path = workdir / f"p{i}.toml"
        path.write_text(bad)
        r = run([str(bins.processor), "serve", "--config", str(path)])
        assert r.returncode != 0
        assert needle in r.stderr and "line" in r.stderr, r.stderr


def test_missing_certificate_is_a_clear_error(bins, certs, workdir):
    proc = Processor(bins, certs, workdir)
    path = workdir / "p.toml"
    path.write_text(proc.config.read_text().replace(str(certs / "server.pem"), str(workdir / "nope.pem")))
    r = run([str(bins.processor), "serve", "--config", str(path)])
    assert r.returncode != 0
    assert "nope.pem" in r.stderr


def test_validate_loads_wasm_plugins(bins, workdir):
    cfg = {
        "agent": {"id": "edge-01"},
        "sink": {"type": "quic", "endpoint": "127.0.0.1:1", "ca": "a", "cert": "b", "key": "c"},
        "sources": {"tail": {"type": "wasm", "plugin": str(workdir / "missing.wasm")}},
    }
    path = workdir / "wasm.toml"
    write_toml(path, cfg)
    r = run([str(bins.agent), "validate", "--config", str(path)])
    assert r.returncode != 0 and "sources.tail.plugin" in r.stderr and "missing.wasm" in r.stderr, r.stderr
    assert "OK" not in r.stdout
    (workdir / "missing.wasm").write_text("not a component")
    r = run([str(bins.agent), "validate", "--config", str(path)])
    assert r.returncode != 0 and "is not a valid WebAssembly component" in r.stderr, r.stderr
