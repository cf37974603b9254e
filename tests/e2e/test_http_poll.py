"""The http-poll connector against a local JSON API that pages with a cursor, answers a
429 with Retry-After and a 500 along the way: every record lands exactly once across an
agent SIGKILL; a URL outside the grant is refused, counted, and the connector says so."""

import http.server
import json
import threading
import time
import urllib.parse

from harness import Agent, Processor, plugin_path, read_pyiceberg, wait_until

TOTAL = 3_000


class Api:
    """GET /v1/events?cursor=C&limit=N: items with id > C (N at most), and next = the last
    id. The 3rd request is answered 429 (Retry-After: 1), the 6th 500."""

    def __init__(self):
        self.requests = 0
        self.statuses = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(url.query)
                api.requests += 1
                n = api.requests
                if url.path != "/v1/events":
                    return self.reply(404, {"error": "no such path"})
                if n == 3:
                    return self.reply(429, {"error": "slow down"}, {"Retry-After": "1"})
                if n == 6:
                    return self.reply(500, {"error": "oops"})
                after = int(q.get("cursor", ["0"])[0])
                limit = int(q.get("limit", ["100"])[0])
                ids = list(range(after + 1, min(after + limit, TOTAL) + 1))
                items = [{"id": i, "kind": "even" if i % 2 == 0 else "odd",
                          "at": f"2026-01-01T00:00:{i % 60:02d}Z"} for i in ids]
                self.reply(200, {"items": items, "next": str(ids[-1] if ids else after)})

            def reply(self, status, doc, headers=None):
                body = json.dumps(doc).encode()
                api.statuses.append(status)
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def source(url: str, grant: str) -> dict:
    return {
        "type": "wasm", "plugin": str(plugin_path("http_poll")), "max_rows": 50,
        "poll_interval": "20ms", "allow_http": [grant],
        "restart_backoff_initial": "50ms", "restart_backoff_max": "200ms", "max_failures": 1000,
        "config": {"url": url, "page_size": 50, "backoff_ms": 200,
                   "columns": [{"name": "id", "type": "int64", "nullable": False},
                               {"name": "kind", "type": "utf8"},
                               {"name": "at", "type": "timestamp-tz"}]},
    }


def test_every_record_lands_once_across_a_sigkill_and_a_url_outside_the_grant_is_refused(
        bins, certs, workdir):
    api = Api()
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        base = f"http://127.0.0.1:{api.port}"
        sources = {
            "events": source(f"{base}/v1/events", f"{base}/v1/events*"),
            # Granted /v1/events only, it asks for /v1/admin.
            "sneaky": source(f"{base}/v1/admin", f"{base}/v1/events*"),
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
