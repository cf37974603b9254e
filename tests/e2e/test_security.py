"""Attacks on the binaries, each refused with a reason and a count, and without effect: the
HTTP endpoints (tokens, roles, browsers on other sites), and forged, tampered and hostile
batches on Kafka."""

import base64
import hashlib
import io
import json
import os
import subprocess
import time

import pyarrow as pa
import pyarrow.ipc

from harness import (TOKEN, Agent, Kafka, Processor, http_request, make_certs, pyiceberg_table, read_pyiceberg,
                     simulator_source, snapshot_marks, wait_until)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_endpoints_admit_only_tokens_with_the_role_each_route_needs(bins, certs, workdir):
    """Without a token, with an unknown one, or with one lacking the role, the processor's
    query API and metrics and the agent's tap and metrics answer 401/403 with the reason and
    count it; `/health` and `/ready` stay open; a token with the role gets through."""
    metrics_only = "sluice_" + os.urandom(32).hex()
    committed_only = "sluice_" + os.urandom(32).hex()
    scraper = {"tokens": [{"name": "e2e", "sha256": digest(TOKEN), "roles": ["read", "metrics"]},
                          {"name": "prometheus", "sha256": digest(metrics_only), "roles": ["metrics"]},
                          {"name": "agents", "sha256": digest(committed_only), "roles": ["committed"]}]}
    proc = Processor(bins, certs, workdir, api=scraper).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(10**9, rate=500)},
                  api=scraper).start().wait_api()
    query = "/api/query?sql=SELECT%201"
    for port, read_path in [(proc.api_port, query), (proc.api_port, "/api/status"),
                            (proc.api_port, "/api/tables"), (agent.api_port, "/tap/telemetry?limit=1")]:
        status, headers, body = http_request(port, read_path, token=None)
        assert status == 401 and json.loads(body)["reason"] == "no_token", (read_path, body)
        assert headers.get("WWW-Authenticate", "").startswith("Bearer"), headers
        status, _, body = http_request(port, read_path, token="sluice_" + "0" * 64)
        assert status == 401 and json.loads(body)["reason"] == "unknown_token", (read_path, body)
        # The digest in the config is not itself a token.
        status, _, body = http_request(port, read_path, token=digest(TOKEN))
        assert status == 401, (read_path, body)
        status, _, body = http_request(port, read_path, token=metrics_only)
        assert status == 403 and "lacks role read" in json.loads(body)["error"], (read_path, body)
        status, _, body = http_request(port, read_path)
        assert status == 200, (read_path, body)
    for port in (proc.api_port, agent.api_port):
        assert http_request(port, "/metrics", token=None)[0] == 401
        assert http_request(port, "/metrics", token=metrics_only)[0] == 200
        for open_path in ("/health", "/ready"):
            assert http_request(port, open_path, token=None)[0] in (200, 503)
    # `committed` opens /api/committed (where the lake stands for an agent) and nothing
    # else; `read` does not open it.
    committed = "/api/committed?stream=telemetry&agent=edge-01"
    assert http_request(proc.api_port, committed, token=None)[0] == 401
    status, _, body = http_request(proc.api_port, committed)
    assert status == 403 and "lacks role committed" in json.loads(body)["error"], body
    assert http_request(proc.api_port, query, token=committed_only)[0] == 403
    assert http_request(proc.api_port, "/metrics", token=committed_only)[0] == 403

    def landed():
        status, _, body = http_request(proc.api_port, committed, token=committed_only)
        return status == 200 and json.loads(body)["seq"] > 0 and json.loads(body)

    answer = wait_until(landed, 60, "a batch of edge-01 in bronze.telemetry")
    assert answer["agent"] == "edge-01" and answer["stream"] == "telemetry", answer
    status, _, body = http_request(proc.api_port, "/api/committed?stream=nope&agent=edge-01",
                                   token=committed_only)
    assert status == 404, body
    refused = proc.metrics()
    assert refused['sluice_processor_api_refused_requests_total{reason="no_token"}'] >= 4, refused
    assert refused['sluice_processor_api_refused_requests_total{reason="missing_role"}'] >= 3
    assert agent.metrics()['sluice_agent_api_refused_requests_total{reason="unknown_token"}'] >= 2

    # top and tap need the token too, and say so.
    top = subprocess.run([str(bins.agent), "top", "--url", f"127.0.0.1:{agent.api_port}", "--once",
                          "--interval", "100ms"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "SLUICE_TOKEN"})
    assert top.returncode != 0 and "401" in top.stderr and "bearer token" in top.stderr, top.stderr
    assert agent.proc.stop() == 0
    proc.stop()


def test_a_web_page_cannot_use_the_query_api_even_when_reads_need_no_token(bins, certs, workdir):
    """The worst case for a browser on the processor's host: an operator lets anonymous
    callers read. A page elsewhere posts `text/plain` (a cross-origin "simple request", which
    browsers send without asking), or reaches the endpoint by a rebound DNS name: each is
    refused, nothing is written, and the refusals are counted."""
    proc = Processor(bins, certs, workdir, api={"anonymous": ["read", "metrics"]}).start()
    target = workdir / "pwned.csv"
    copy = f"COPY (SELECT 'pwned' AS x) TO '{target}' STORED AS CSV".encode()
    attacks = [
        ({"Origin": "http://evil.example", "Content-Type": "text/plain"}, "cross_origin", 403),
        ({"Content-Type": "text/plain"}, "not_json", 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "not_json", 415),
        ({"Host": "rebind.evil.example", "Content-Type": "application/json"}, "host", 403),
        ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, "cross_origin", 403),
    ]
    for headers, reason, code in attacks:
        status, _, body = http_request(proc.api_port, "/api/query", token=None, method="POST",
                                       body=copy, headers=headers)
        assert status == code and json.loads(body)["reason"] == reason, (headers, body)
    # A GET from a rebound name is refused too, so a page there cannot read results either.
    status, _, body = http_request(proc.api_port, "/api/tables", token=None,
                                   headers={"Host": "rebind.evil.example:80"})
    assert status == 403, body
    # The same origin, as JSON, runs (a read).
    status, _, body = http_request(
        proc.api_port, "/api/query", token=None, method="POST", body=json.dumps({"sql": "SELECT 1 AS one"}).encode(),
        headers={"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{proc.api_port}"})
    assert status == 200 and json.loads(body)["rows"] == [{"one": 1}], body
    assert not target.exists()
    m = proc.metrics()
    for reason, n in [("cross_origin", 2), ("not_json", 2), ("host", 2)]:
        assert m[f'sluice_processor_api_refused_requests_total{{reason="{reason}"}}'] == n, m
    proc.stop()


def test_queries_cannot_take_the_processors_memory_or_run_unbounded(bins, certs, workdir):
    """`[query]` limits, on the binary: a query needing more than the memory pool fails
    (422) and the next one runs; past `max_concurrent` a query is refused at once (429); a
    query past `timeout` is cancelled (504). The processor lands data throughout."""
    import threading
    proc = Processor(bins, certs, workdir, sections={
        "query": {"memory_limit": "16MiB", "max_concurrent": 1, "timeout": "4s"}}).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(10**9, rate=2_000)}).start()
    try:
        def query(sql):
            status, _, body = http_request(proc.api_port, "/api/query", method="POST",
                                           body=json.dumps({"sql": sql}).encode(),
                                           headers={"Content-Type": "application/json"})
            return status, json.loads(body)
        status, body = query("SELECT array_agg(value) FROM range(10000000000)")
        assert status == 422 and "query.memory_limit" in body["error"], body
        status, body = query("SELECT 1 AS one")
        assert status == 200 and body["rows"] == [{"one": 1}], body

        # A slow query takes the only slot; a query sent while it runs is turned away. (Should
        # the quick one win the slot first, the slow one is the one refused: try again.)
        for _ in range(5):
            slow = {}
            t = threading.Thread(
                target=lambda: slow.update(r=query("SELECT count(*) FROM range(100000000000)")))
            t.start()
            time.sleep(1)
            busy = query("SELECT 1")
            t.join(30)
            if busy[0] == 429 and slow["r"][0] == 504:
                break
        assert busy[0] == 429 and "max_concurrent" in busy[1]["error"], busy
        assert slow["r"][0] == 504 and "query.timeout" in slow["r"][1]["error"], slow
        m = proc.metrics()
        for outcome in ("memory", "busy", "timeout"):
            assert m[f'sluice_processor_queries_total{{outcome="{outcome}"}}'] >= 1, m
        committed = 'sluice_processor_committed_rows_total{table="bronze.telemetry"}'
        before = m.get(committed, 0)
        wait_until(lambda: proc.metrics().get(committed, 0) > before, 30, "landing to go on")
        assert proc.proc.alive()
    finally:
        agent.proc.kill()
        proc.stop()


# --- Kafka: the broker authenticates no one, so batches carry their agent's signature ---

def envelope_headers(agent: str, stream: str, seq: int, batch: pa.RecordBatch, fingerprint: str) -> list:
    return [("sluice-version", "1"), ("sluice-agent", agent), ("sluice-stream", stream), ("sluice-seq", str(seq)),
            ("sluice-schema", fingerprint), ("sluice-created-at-us", str(int(time.time() * 1e6))),
            ("sluice-rows", str(batch.num_rows))]


def signed_bytes(headers: list, payload: bytes) -> bytes:
    """The bytes an agent signs (protocol/src/kafka.rs, `Envelope::signed_bytes`), written
    again from its description."""
    fields = [*headers, ("payload-sha256", hashlib.sha256(payload).hexdigest())]
    return b"sluice-kafka-batch/1\n" + b"".join(
        f"{name}:{len(value.encode())}:".encode() + value.encode() + b"\n" for name, value in fields)


def sign(certs, agent: str, headers: list, payload: bytes) -> list:
    """The signature headers of `agent`'s certificate and key over `headers` and `payload`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    cert = x509.load_pem_x509_certificate((certs / f"agent-{agent}.pem").read_bytes())
    key = serialization.load_pem_private_key((certs / f"agent-{agent}.key").read_bytes(), password=None)
    signature = key.sign(signed_bytes(headers, payload), ec.ECDSA(hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return [("sluice-cert", base64.b64encode(der).decode()),
            ("sluice-signature", "ECDSA_NISTP256_SHA256:" + base64.b64encode(signature).decode())]


def ipc(batch: pa.RecordBatch, compression=None) -> bytes:
    out = io.BytesIO()
    with pa.ipc.new_stream(out, batch.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_batch(batch)
    return out.getvalue()


def test_forged_and_hostile_kafka_batches_are_dead_lettered_while_the_genuine_agent_lands(bins, certs, workdir):
    """A producer on the agents' topic tries: an unsigned batch claiming edge-01 with the
    largest sequence number (which would raise its mark and drop its genuine batches as
    duplicates), a genuine signed batch with its sequence changed, a batch signed by edge-02
    claiming edge-01, edge-02 writing a stream it may not, and edge-02 signing a compression
    bomb. Each goes to the dead-letter table with its reason and is counted; the processor
    stays up; edge-01's rows land exactly once and its mark is its own."""
    from confluent_kafka import Consumer, Producer

    kafka = Kafka(workdir)
    topic = "sluice.telemetry"
    kafka.create_topic(topic, partitions=1)
    proc = Processor(bins, certs, workdir, sections={
        "kafka": {"brokers": kafka.brokers, "topics": [topic]},
        "access": {"allow": {"edge-01": ["telemetry"], "edge-02": ["telemetry"]}},
    }).start()
    n = 20_000
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(n, rate=4_000)},
                  sink={"type": "kafka", "brokers": kafka.brokers},
                  batch={"max_rows": 1_000, "max_age": "200ms"}).start()

    # A genuine message, read off the topic as any consumer could.
    consumer = Consumer({"bootstrap.servers": kafka.brokers, "group.id": "attacker",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    genuine = None
    deadline = time.time() + 60
    while genuine is None and time.time() < deadline:
        m = consumer.poll(1)
        if m is not None and not m.error():
            genuine = m
    consumer.close()
    assert genuine is not None, "no genuine message to replay"
    g_headers = [(k, v.decode()) for k, v in genuine.headers()]
    g = dict(g_headers)
    assert g["sluice-agent"] == "edge-01" and "sluice-signature" in g, g
    fingerprint = g["sluice-schema"]
    huge = str(2**63 - 1)

    rows = pa.record_batch([pa.array(list(range(1000)), pa.int64())], names=["v"])
    payload = ipc(rows)
    attacks = {}
    forged = envelope_headers("edge-01", "telemetry", 2**63 - 1, rows, fingerprint)
    attacks["unsigned"] = (forged, payload)
    attacks["bad_signature"] = ([(k, huge if k == "sluice-seq" else v) for k, v in g_headers], genuine.value())
    claims = envelope_headers("edge-01", "telemetry", 2**62, rows, fingerprint)
    attacks["wrong_agent"] = (claims + sign(certs, "edge-02", claims, payload), payload)
    secret = envelope_headers("edge-02", "secret", 1, rows, fingerprint)
    attacks["stream_not_allowed"] = (secret + sign(certs, "edge-02", secret, payload), payload)
    bomb = bytearray(ipc(rows, compression="lz4"))
    # The values buffer opens the body (no validity buffer), after its uncompressed
    # length: claim 2^62 bytes. The body ends 8 bytes (the end marker) before the stream.
    message = pa.ipc.MessageReader.open_stream(pa.py_buffer(bytes(bomb)))
    message.read_next_message()  # the schema
    batch_message = message.read_next_message()
    body_at = len(bomb) - 8 - batch_message.body.size
    bomb[body_at:body_at + 8] = (2**62).to_bytes(8, "little")
    bomb = bytes(bomb)
    b_env = envelope_headers("edge-02", "telemetry", 1, rows, fingerprint)
    attacks["invalid_ipc"] = (b_env + sign(certs, "edge-02", b_env, bomb), bomb)

    producer = Producer({"bootstrap.servers": kafka.brokers})
    for headers, value in attacks.values():
        producer.produce(topic, key=b"edge-01", value=value, headers=[(k, v.encode()) for k, v in headers])
    assert producer.flush(30) == 0

    assert agent.wait(180) == 0, agent.proc.output()[-3000:]
    wait_until(lambda: proc.metrics().get('sluice_processor_committed_rows_total{table="bronze.telemetry"}', 0) >= n,
               120, "every genuine row to land")
    def letters_landed():
        try:
            return len(read_pyiceberg(proc, "bronze.dead_letters")) >= len(attacks)
        except Exception:  # the table is not there yet
            return False
    wait_until(letters_landed, 60, "the attacks to be dead-lettered")
    assert proc.proc.alive(), "the processor survives the bomb"
    letters = read_pyiceberg(proc, "bronze.dead_letters")
    assert len(letters) == len(attacks), [r["reason"] for r in letters]
    reasons = sorted(r["reason"] for r in letters)
    for words in ["not signed", "does not match", "names agent \"edge-02\", the message claims \"edge-01\"",
                  'may not write stream "secret"', "compressed IPC buffers are refused"]:
        assert any(words in r for r in reasons), (words, reasons)
    m = proc.metrics()
    for reason in ["unsigned", "bad_signature", "wrong_agent"]:
        assert m[f'sluice_processor_kafka_unverified_batches_total{{reason="{reason}"}}'] == 1, m
    assert m['sluice_processor_lanes_refused_total{reason="stream_not_allowed"}'] == 1

    # Exactly once, and edge-01's mark is the count of its own batches.
    table = pyiceberg_table(proc, "bronze.telemetry")
    landed = table.scan(selected_fields=("_agent", "_seq")).to_arrow()
    assert landed.num_rows == n and set(landed.column("_agent").to_pylist()) == {"edge-01"}
    top = max(landed.column("_seq").to_pylist())
    assert snapshot_marks(table)["seq"]["edge-01"] == top < 2**62
    proc.stop()


def test_a_revoked_agent_certificate_is_refused_and_keys_are_owner_only(bins, workdir):
    """`certs revoke` lists an agent's certificate in the CA's revocation list; a processor
    given it (`quic.crl`) refuses that agent's connections and lands the others'. Keys are
    written owner-only, and certificates expire after their `--days`."""
    certs = workdir / "certs"
    make_certs(bins, certs, agents=["edge-01", "edge-02"])
    for key in certs.glob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    out = subprocess.run([str(bins.processor), "certs", "issue", "--dir", str(certs), "edge-03", "--days", "7"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((certs / "agent-edge-03.pem").read_bytes())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 7 <= lifetime.days <= 8, lifetime
    out = subprocess.run([str(bins.processor), "certs", "revoke", "--dir", str(certs), "edge-02"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "revoked edge-02" in out.stdout, out.stderr

    proc = Processor(bins, certs, workdir, quic={"crl": str(certs / "crl.pem")}).start()
    good = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(2_000)}).start()
    revoked = Agent(bins, certs, workdir, proc, {"other": simulator_source(2_000, seed=2)},
                    agent_id="edge-02").start()
    try:
        assert good.wait(120) == 0, good.proc.output()[-2000:]
        wait_until(lambda: "revoked" in proc.proc.output().lower(), 60, "the revoked agent to be refused")
        assert revoked.proc.alive(), "the refused agent keeps its batches and retries"
        m = proc.metrics()
        assert m['sluice_processor_committed_rows_total{table="bronze.telemetry"}'] == 2_000
        assert m.get('sluice_processor_committed_rows_total{table="bronze.other"}', 0) == 0
    finally:
        revoked.proc.kill()
        proc.stop()
