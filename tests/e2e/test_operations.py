"""Operating Sluice: health that tells the truth."""

import os
import signal
import time

from harness import Agent, Processor, simulator_source, wait_until

STALLED_AFTER = 3


def test_stalled_processor_makes_the_agent_not_ready_until_it_recovers(bins, certs, workdir):
    """A processor that stops answering (SIGSTOP: alive, connected, silent) turns the agent's
    `/ready` into a 503 naming the stalled stream within `stalled_after` plus a little; it is
    ready again once the processor resumes. `/health` (liveness) stays 200 throughout: a
    stall is not a reason to restart the agent."""
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(2_000_000, rate=5_000)},
                  api={"stalled_after": f"{STALLED_AFTER}s"}).start().wait_api()
    acked = 'sluice_agent_acked_rows_total{stream="telemetry"}'
    wait_until(lambda: agent.metrics().get(acked, 0) > 0, 60, "rows to be acknowledged")
    assert agent.ready() == (200, "ready\n")

    os.kill(proc.proc.p.pid, signal.SIGSTOP)
    try:
        stopped = time.time()
        status, body = wait_until(lambda: (r := agent.ready())[0] == 503 and r, 30,
                                  "the agent to turn not ready")
        took = time.time() - stopped
        assert STALLED_AFTER <= took < STALLED_AFTER + 5, f"not ready after {took:.1f}s"
        assert body.startswith("not ready\n"), body
        assert 'sink for stream "telemetry" stalled: ' in body and "batches waiting" in body, body
        assert agent.health() == (200, "ok\n")
    finally:
        os.kill(proc.proc.p.pid, signal.SIGCONT)

    resumed = time.time()
    wait_until(lambda: agent.ready()[0] == 200, 60, "the agent to be ready again")
    print(f"ready again {time.time() - resumed:.1f}s after the processor resumed")
    before = agent.metrics()[acked]
    wait_until(lambda: agent.metrics()[acked] > before, 30, "rows to flow again")
    assert agent.health() == (200, "ok\n")
