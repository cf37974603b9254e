"""Per-agent stream authorisation: the processor maps agents (by certificate) to the streams
they may write; anything else is refused with the reason, counted, and never lands."""

import time

import pytest
from pyiceberg.exceptions import NoSuchTableError

from harness import Agent, Processor, pyiceberg_table, simulator_source, wait_until


def test_agents_write_only_their_streams(bins, certs, workdir):
    proc = Processor(bins, certs, workdir, sections={"access": {"allow": {"edge-01": ["telemetry", "cpu_*"]}}}).start()
    allowed = refused = stranger = None
    try:
        allowed = Agent(bins, certs, workdir, proc, {
            "telemetry": simulator_source(5_000),
            "cpu_load": simulator_source(3_000, seed=2),
            "secret": simulator_source(1_000, seed=3),
        }).start()
        # A certified agent that is not listed at all.
        stranger = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(1_000)},
                         agent_id="edge-02").start()
        m = wait_until(lambda: (lambda m: m if m.get('sluice_processor_lanes_refused_total{reason="stream_not_allowed"}', 0) > 0
                                and m.get('sluice_processor_lanes_refused_total{reason="agent_not_allowed"}', 0) > 0
                                and m.get('sluice_processor_committed_rows_total{table="bronze.cpu_load"}', 0) == 3_000
                                and m.get('sluice_processor_committed_rows_total{table="bronze.telemetry"}', 0) == 5_000
                                else None)(proc.metrics()), 60, "both refusals and the allowed rows")
        time.sleep(1)
        out = allowed.proc.output()
        assert 'agent "edge-01" may not write stream "secret"' in out, out[-2000:]
        assert 'agent "edge-02" is not listed' in stranger.proc.output()
        # The refused agents keep their batches on disk and keep trying; nothing landed.
        assert allowed.proc.alive() and stranger.proc.alive()
        assert proc.metrics()['sluice_processor_committed_rows_total{table="bronze.telemetry"}'] == 5_000
        assert len(pyiceberg_table(proc, "bronze.telemetry").scan().to_arrow()) == 5_000
        with pytest.raises(NoSuchTableError):
            pyiceberg_table(proc, "bronze.secret")
    finally:
        for a in (allowed, stranger):
            if a and a.proc:
                a.proc.kill()
        proc.stop()


def test_a_processor_without_rules_refuses_every_stream(bins, certs, workdir):
    """Stream permissions deny by default: with no `[access]` rules, a certified agent's
    lanes are refused with a reason that says how to grant them, and nothing lands."""
    proc = Processor(bins, certs, workdir, sections={"access": {}}).start()
    agent = None
    try:
        agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(1_000)}).start()
        wait_until(lambda: proc.metrics().get('sluice_processor_lanes_refused_total{reason="no_rules"}', 0) > 0,
                   60, "the lane to be refused")
        assert "the processor grants no streams: add [access.allow] rules" in proc.proc.output()
        wait_until(lambda: "grants no streams" in agent.proc.output(), 30, "the agent to log the refusal")
        assert agent.proc.alive(), "the agent keeps its batches and retries"
        assert proc.metrics().get('sluice_processor_committed_rows_total{table="bronze.telemetry"}', 0) == 0
        with pytest.raises(NoSuchTableError):
            pyiceberg_table(proc, "bronze.telemetry")
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()
