"""Attacks on the binaries, each refused with a reason and a count, and without effect: the
HTTP endpoints (tokens, roles, browsers on other sites), ..."""

import hashlib
import json
import os
import subprocess

from harness import TOKEN, Agent, Processor, http_request, simulator_source, wait_until


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_endpoints_admit_only_tokens_with_the_role_each_route_needs(bins, certs, workdir):
    """Without a token, with an unknown one, or with one lacking the role, the processor's
    query API and metrics and the agent's tap and metrics answer 401/403 with the reason and
    count it; `/health` and `/ready` stay open; a token with the role gets through."""
    metrics_only = "sluice_" + os.urandom(32).hex()
    scraper = {"tokens": [{"name": "e2e", "sha256": digest(TOKEN), "roles": ["read", "metrics"]},
                          {"name": "prometheus", "sha256": digest(metrics_only), "roles": ["metrics"]}]}
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
