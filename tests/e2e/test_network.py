"""Network grants: a connector reaches exactly the hosts, ports and URLs it is granted.
Connects to another port or address, names it was not granted, UDP, listening and HTTP
requests outside its grant are refused, counted with their target and reported to the
connector, while the rest of the agent keeps flowing; a peer that never answers is cut
off by network_timeout."""

import socket
import threading
import time

from harness import (Agent, HttpServer, Processor, plugin_path, read_pyiceberg,
                     simulator_source, wait_until)


class LineServer:
    """A TCP server on loopback answering each line with `pong` (or never, when mute)."""

    def __init__(self, mute=False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.mute = mute
        self.clients = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(conn)
            if not self.mute:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            buf = b""
            while chunk := conn.recv(1024):
                buf += chunk
                while b"\n" in buf:
                    _, buf = buf.split(b"\n", 1)
                    conn.sendall(b"pong\n")

    def close(self):
        self.sock.close()
        for c in self.clients:
            c.close()


class Backlogged:
    """A listening socket whose queue is full: a connect to it hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fill = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fill.append(c)

    def close(self):
        for c in self.fill + [self.sock]:
            c.close()


def web_server() -> HttpServer:
    """GET /ok answers `hello`, anything else 404."""
    return HttpServer(lambda path: (200, {}, b"hello") if path == "/ok" else (404, {}, b"nope"))


def probe(**config) -> dict:
    return {"type": "wasm", "plugin": str(plugin_path("hostile_netprobe")), "poll_interval": "50ms",
            "config": config}


def test_a_connector_reaches_only_its_grants_and_is_told_of_each_refusal(bins, certs, workdir):
    echo, other, web = LineServer(), LineServer(), web_server()
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        config = {
            "tcp": [f"db.test:{echo.port}",          # granted: answers pong
                    f"127.0.0.1:{other.port}",       # a port no grant names
                    f"127.0.0.2:{echo.port}",        # an address the granted name does not have
                    f"sneaky.test:{echo.port}"],     # a name no grant names (same address)
            "send": "ping\n",
            "udp": [f"127.0.0.1:{echo.port}"],
            "listen": True,
            "lookup": ["evil.test"],
            "http": [f"http://127.0.0.1:{web.port}/ok", f"http://127.0.0.1:{web.port}/admin"],
        }
        granted = {**probe(**config), "allow_tcp": [f"db.test:{echo.port}"],
                   "allow_http": [f"http://127.0.0.1:{web.port}/ok"]}
        sources = {"probe": granted,
                   # Without grants it reaches nothing at all.
                   # (and keeps trying, which keeps the agent running for the checks).
                   "bare": probe(tcp=[f"127.0.0.1:{echo.port}"],
                                 http=[f"http://127.0.0.1:{web.port}/ok"], rounds=1_000_000),
                   "telemetry": simulator_source(total=5_000)}
        agent = Agent(bins, certs, workdir, proc, sources,
                      network={"hosts": {"db.test": "127.0.0.1", "sneaky.test": "127.0.0.1"}})
        agent.start().wait_api()
        acked = 'sluice_agent_acked_rows_total{stream="%s"}'
        wait_until(lambda: agent.metrics().get(acked % "probe", 0) >= 10
                   and agent.metrics().get(acked % "telemetry", 0) >= 5_000
                   and agent.metrics().get(acked % "bare", 0) >= 2, 120, "every stream landed")
        m = agent.metrics()
        assert agent.proc.stop(timeout=60) == 0, agent.proc.output()[-3000:]

        rows = {(r["action"], r["target"]): (r["ok"], r["detail"]) for r in read_pyiceberg(proc, "bronze.probe")}
        assert rows[("tcp", f"db.test:{echo.port}")] == (True, "pong"), rows
        assert rows[("http", f"http://127.0.0.1:{web.port}/ok")] == (True, "200 hello"), rows
        refused = [k for k, (ok, _) in rows.items() if not ok]
        assert sorted(refused) == sorted([
            ("tcp", f"127.0.0.1:{other.port}"), ("tcp", f"127.0.0.2:{echo.port}"),
            ("tcp", f"sneaky.test:{echo.port}"), ("udp", f"127.0.0.1:{echo.port}"),
            ("listen", "127.0.0.1:0"), ("listen", "0.0.0.0:0"), ("lookup", "evil.test"),
            ("http", f"http://127.0.0.1:{web.port}/admin")]), rows
        assert "denied" in rows[("http", f"http://127.0.0.1:{web.port}/admin")][1].lower(), rows
        bare = {(r["action"], r["target"]): r["ok"] for r in read_pyiceberg(proc, "bronze.bare")}
        assert not any(bare.values()), bare
        assert len(read_pyiceberg(proc, "bronze.telemetry")) == 5_000

        # Each refusal counted with its kind and target; bytes counted both ways.
        def refused(plugin, kind, target):
            key = f'sluice_agent_plugin_network_refused_total{{plugin="{plugin}",kind="{kind}",target="{target}"}}'
            return m.get(key, 0)
        assert refused("probe", "tcp", f"127.0.0.1:{other.port}") == 1, m
        assert refused("probe", "tcp", f"127.0.0.2:{echo.port}") == 1, m
        assert refused("probe", "dns", "sneaky.test") == 1, m
        assert refused("probe", "dns", "evil.test") == 1, m
        assert refused("probe", "udp", "socket") == 1, m  # no UDP socket is ever made
        assert refused("probe", "listen", "127.0.0.1:0") == 1, m  # a bind to an address
        listens = [k for k in m if 'plugin="probe",kind="listen",target="0.0.0.0:' in k]
        assert len(listens) == 1 and m[listens[0]] == 1, m  # listening after a wildcard bind
        assert refused("bare", "tcp", "socket") >= 1, m  # no TCP socket without a grant
        assert refused("probe", "http", f"http://127.0.0.1:{web.port}/admin") == 1, m
        assert refused("bare", "http", f"http://127.0.0.1:{web.port}/ok") >= 1, m
        for direction in ("in", "out"):
            assert m[f'sluice_agent_plugin_network_bytes_total{{plugin="probe",direction="{direction}"}}'] > 0, m
        assert "refused a network use no grant covers" in agent.proc.output()
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()
        for s in (echo, other, web):
            s.close()


def test_a_peer_that_never_answers_is_cut_off_by_network_timeout_and_counted(bins, certs, workdir):
    mute, full = LineServer(mute=True), Backlogged()
    proc = Processor(bins, certs, workdir).start()
    agent = None
    try:
        def hung(port):
            return {**probe(tcp=[f"127.0.0.1:{port}"], send="ping\n"), "allow_tcp": [f"127.0.0.1:{port}"],
                    "network_timeout": "300ms", "call_timeout": "5s", "restart_backoff_initial": "50ms",
                    "restart_backoff_max": "100ms", "max_failures": 1000}
        sources = {"read_hangs": hung(mute.port), "connect_hangs": hung(full.port),
                   "telemetry": simulator_source(total=5_000)}
        agent = Agent(bins, certs, workdir, proc, sources).start().wait_api()
        failures = 'sluice_agent_plugin_failures_total{plugin="%s",reason="network_timeout"}'
        timeouts = 'sluice_agent_plugin_network_timeouts_total{plugin="%s"}'
        acked = 'sluice_agent_acked_rows_total{stream="telemetry"}'
        started = time.monotonic()
        wait_until(lambda: all(agent.metrics().get(failures % p, 0) >= 2 and agent.metrics().get(timeouts % p, 0) >= 2
                               for p in ("read_hangs", "connect_hangs"))
                   and agent.metrics().get(acked, 0) >= 5_000, 60, "both cut off twice, telemetry landed")
        # Cut at 300 ms each, not at the 5 s call budget.
        assert time.monotonic() - started < 4.5
        assert agent.proc.alive()
    finally:
        if agent and agent.proc:
            agent.proc.kill()
        proc.stop()
        mute.close()
        full.close()


def test_https_is_done_by_the_host_and_trusts_only_its_roots_and_the_configured_ca(bins, certs, workdir):
    https = HttpServer(lambda path: (200, {}, b"secret") if path == "/ok" else (404, {}, b"nope"),
                       tls=(certs / "server.pem", certs / "server.key"))
    proc = Processor(bins, certs, workdir).start()
    try:
        url = f"https://localhost:{https.port}/ok"
        source = {**probe(http=[url]), "allow_http": [url]}
        # The test CA is no system root: without `ca` the certificate is refused.
        for stream, network in (("untrusted", {}), ("trusted", {"ca": str(certs / "ca.pem")})):
            agent = Agent(bins, certs, workdir, proc, {stream: source}, network=network or None,
                          data_dir=workdir / f"agent-{stream}").start()
            assert agent.wait(60) == 0, agent.proc.output()[-3000:]
        [untrusted] = read_pyiceberg(proc, "bronze.untrusted")
        assert not untrusted["ok"] and "Tls" in untrusted["detail"], untrusted
        [trusted] = read_pyiceberg(proc, "bronze.trusted")
        assert (trusted["ok"], trusted["detail"]) == (True, "200 secret"), trusted
    finally:
        proc.stop()
        https.close()
