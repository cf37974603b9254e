"""The http-poll connector, in Rust and in Python (componentize-py, `wasi:http`), against
a local JSON API that pages with a cursor, answers a 429 with Retry-After and a 500 along
the way: every record lands exactly once across an agent SIGKILL; a URL outside the grant
is refused, counted, and the connector says so."""

import json
import urllib.parse

import pytest

from harness import Agent, HttpServer, Processor, plugin_path, read_pyiceberg, wait_until

TOTAL = 3_000


class Api:
    """GET /v1/events?cursor=C&limit=N: items with id > C (N at most), and next = the last
    id. The 3rd request is answered 429 (Retry-After: 1), the 6th 500."""

    def __init__(self):
        self.requests = 0
        self.statuses = []
        self.http = HttpServer(self.answer)
        self.port = self.http.port

    def answer(self, path):
        url = urllib.parse.urlparse(path)
        q = urllib.parse.parse_qs(url.query)
        self.requests += 1
        if url.path != "/v1/events":
            status, headers, doc = 404, {}, {"error": "no such path"}
        elif self.requests == 3:
            status, headers, doc = 429, {"Retry-After": "1"}, {"error": "slow down"}
        elif self.requests == 6:
            status, headers, doc = 500, {}, {"error": "oops"}
        else:
            after = int(q.get("cursor", ["0"])[0])
            limit = int(q.get("limit", ["100"])[0])
            ids = list(range(after + 1, min(after + limit, TOTAL) + 1))
            items = [{"id": i, "kind": "even" if i % 2 == 0 else "odd",
                      "at": f"2026-01-01T00:00:{i % 60:02d}Z"} for i in ids]
            status, headers, doc = 200, {}, {"items": items, "next": str(ids[-1] if ids else after)}
        self.statuses.append(status)
        return status, {"content-type": "application/json", **headers}, json.dumps(doc).encode()

    def close(self):
        self.http.close()


def source(plugin: str, url: str, grant: str) -> dict:
    return {
        "type": "wasm", "plugin": str(plugin_path(plugin)), "max_rows": 50,
        "poll_interval": "20ms", "allow_http": [grant],
        "restart_backoff_initial": "50ms", "restart_backoff_max": "200ms", "max_failures": 1000,
        "config": {"url": url, "page_size": 50, "backoff_ms": 200,
                   "columns": [{"name": "id", "type": "int64", "nullable": False},
                               {"name": "kind", "type": "utf8"},
                               {"name": "at", "type": "timestamp-tz"}]},
    }


@pytest.mark.parametrize("plugin", ["http_poll", "python_http-poll"])
def test_every_record_lands_once_across_a_sigkill_and_a_url_outside_the_grant_is_refused(
        bins, certs, workdir, plugin):
    api = Api()
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        base = f"http://127.0.0.1:{api.port}"
        sources = {
            "events": source(plugin, f"{base}/v1/events", f"{base}/v1/events*"),
            # Granted /v1/events only, it asks for /v1/admin.
            "sneaky": source(plugin, f"{base}/v1/admin", f"{base}/v1/events*"),
        }
        acked = 'sluice_agent_acked_rows_total{stream="events"}'

        def start():
            return Agent(bins, certs, workdir, proc, sources).start().wait_api()

        agent = start()
        wait_until(lambda: agent.metrics().get(acked, 0) >= 600, 60, "some pages landed")
        agent.proc.kill()
        agent = start()
        wait_until(lambda: len(read_pyiceberg(proc, "bronze.events")) >= TOTAL, 120, "every record landed")

        rows = read_pyiceberg(proc, "bronze.events")
        ids = sorted(r["id"] for r in rows)
        assert ids == list(range(1, TOTAL + 1)), "each record exactly once"
        assert {r["kind"] for r in rows if r["id"] % 2 == 0} == {"even"}
        assert 429 in api.statuses and 500 in api.statuses

        m = agent.metrics()
        refused = f'sluice_agent_plugin_network_refused_total{{plugin="sneaky",kind="http",target="{base}/v1/admin"}}'
        assert m.get(refused, 0) >= 1, m
        assert m.get('sluice_agent_plugin_failures_total{plugin="sneaky",reason="plugin_error"}', 0) >= 1
        assert "no allow_http grant covers it" in agent.proc.output()
        assert m['sluice_agent_plugin_network_bytes_total{plugin="events",direction="in"}'] > 0
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()
        api.close()
