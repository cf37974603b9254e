"""The mqtt connector against Debian's mosquitto: a persistent MQTT 5 session at QoS 1,
each message acknowledged to the broker only once the lake holds it. Messages land once
across agent and processor SIGKILLs (what the broker sends again after a restart and the
agent already holds is not delivered twice), and a message the agent held but lost with its
disk is still at the broker, because it was never acknowledged."""

import contextlib
import json
import random
import shutil
import threading
import time

import pytest

from harness import Agent, Mosquitto, Processor, kill_in_turn, networked_source, pyiceberg_table, read_pyiceberg, \
    wait_until

TOPIC = "plant/line-1/telemetry"


@pytest.fixture
def later():
    """Register what to stop after the test, whatever happens (last registered, first)."""
    with contextlib.ExitStack() as stack:
        yield stack.callback


def mqtt_source(broker: Mosquitto, **config) -> dict:
    return networked_source("mqtt", broker.port, {
        "client_id": "sluice-plant", "username": broker.USER, "password": broker.PASSWORD,
        "topics": ["plant/+/telemetry"], **config})


def landed(proc: Processor) -> list[int]:
    """The `n` of every message bronze holds, as landed (duplicates kept)."""
    try:
        t = pyiceberg_table(proc, "bronze.plant")
    except Exception:
        return []
    rows = t.scan(selected_fields=("payload",)).to_arrow().column("payload").to_pylist()
    return [json.loads(p)["n"] for p in rows if p is not None]


def publish(pub, first: int, count: int, pace: float = 0.0) -> None:
    for n in range(first, first + count):
        pub.publish(TOPIC, json.dumps({"n": n}).encode())
        if pace and n % 50 == 0:
            time.sleep(pace)


def test_messages_land_once_across_kills_and_the_broker_is_acknowledged_as_the_lake_commits(
        bins, certs, workdir, later):
    broker = Mosquitto(workdir)
    later(broker.proc.kill)
    proc = Processor(bins, certs, workdir).start()
    later(proc.stop)
    # A small window: the broker stops sending once 300 messages wait for their PUBACK, so
    # the flow goes on only if the acknowledgements follow the lake's commits.
    sources = {"plant": mqtt_source(broker, receive_maximum=300)}

    def start_agent() -> Agent:
        a = Agent(bins, certs, workdir, proc, sources, batch={"max_rows": 1000, "max_age": "100ms"}).start()
        later(a.proc.kill)
        return a

    agent = start_agent()
    wait_until(lambda: agent.metrics().get('sluice_agent_plugin_network_bytes_total{plugin="plant",direction="in"}', 0) > 0,
               60, "the connector reached the broker")
    pub = broker.publisher()
    total = 8000
    # Published steadily while the agent is killed mid-flow (messages in flight, held in
    # its log and not yet acknowledged) and the processor once.
    publishing = threading.Thread(target=publish, args=(pub, 0, total, 0.06), daemon=True)
    publishing.start()
    agent = kill_in_turn(["agent", "processor", "agent", "agent"], agent, start_agent, proc, random.Random(3), (1.0, 2.0))
    publishing.join(120)
    assert not publishing.is_alive()
    # A payload that is not UTF-8 lands whole, in payload_binary.
    raw = workdir / "raw.bin"
    raw.write_bytes(b"\xff\x00binary\xfe")
    pub.publish("plant/line-2/telemetry", raw.read_bytes())
    pub.close()

    wait_until(lambda: len(set(landed(proc))) >= total, 180, "every message in bronze")
    got = landed(proc)
    assert sorted(got) == list(range(total)), "a message landed twice or not at all"
    rows = read_pyiceberg(proc, "bronze.plant")
    assert len(rows) == total + 1
    binary = [r for r in rows if r["payload"] is None]
    assert len(binary) == 1 and binary[0]["payload_binary"] == raw.read_bytes()
    assert binary[0]["topic"] == "plant/line-2/telemetry"
    assert {r["qos"] for r in rows} == {1}
    # seq numbers the stream once across the restarts.
    seqs = sorted(r["seq"] for r in rows)
    assert seqs == list(range(1, total + 2))
    # Messages from one publisher keep their order.
    in_order = [json.loads(r["payload"])["n"] for r in sorted(rows, key=lambda r: r["seq"]) if r["payload"]]
    assert in_order == list(range(total))
    # Restarts met messages the agent held and the broker sent again: not delivered twice.
    assert "already held, not delivered twice" in agent.proc.output()
    # Every message was acknowledged as the lake committed it: once the last commit's
    # acknowledgements are out, the broker holds nothing more for the session.
    time.sleep(2)
    agent.proc.kill()
    assert broker.left_for("sluice-plant") == 0


def test_a_message_the_agent_held_but_lost_with_its_disk_is_still_at_the_broker(bins, certs, workdir, later):
    broker = Mosquitto(workdir)
    later(broker.proc.kill)
    proc = Processor(bins, certs, workdir).start()
    later(proc.stop)
    sources = {"plant": mqtt_source(broker)}
    agent = Agent(bins, certs, workdir, proc, sources, batch={"max_rows": 1000, "max_age": "100ms"}).start()
    later(agent.proc.kill)
    wait_until(lambda: agent.metrics().get('sluice_agent_plugin_network_bytes_total{plugin="plant",direction="in"}', 0) > 0,
               60, "the connector reached the broker")
    pub = broker.publisher()
    publish(pub, 0, 500)
    wait_until(lambda: len(landed(proc)) >= 500, 60, "the first messages in bronze")

    # The lake stops committing; the agent keeps receiving into its write-ahead log.
    proc.kill()
    publish(pub, 500, 500)
    pub.close()
    wait_until(lambda: agent.metrics().get('sluice_agent_source_rows_total{source="plant"}', 0) >= 1000,
               60, "the agent received every message")
    # Its disk is lost: only the broker still has the 500 messages the lake never held.
    agent.proc.kill()
    shutil.rmtree(agent.data_dir)
    proc.start()
    agent = Agent(bins, certs, workdir, proc, sources, batch={"max_rows": 1000, "max_age": "100ms"}).start()
    later(agent.proc.kill)
    wait_until(lambda: len(landed(proc)) >= 1000, 120, "the messages the broker kept in bronze")
    assert sorted(landed(proc)) == list(range(1000))
