"""Starting real sluice processes, and reading their lake back with independent readers."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message

REPO = pathlib.Path(__file__).resolve().parents[2]

# The bearer token every process started here admits (read and metrics); its config holds
# only the digest, as an operator's would.
TOKEN = "sluice_" + os.urandom(32).hex()


def api_section(port: int, extra: dict | None = None) -> dict:
    """An `[api]` section on 127.0.0.1:`port` admitting `TOKEN`."""
    return {
        "listen": f"127.0.0.1:{port}",
        "tokens": [{"name": "e2e", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
                    "roles": ["read", "metrics"]}],
        **(extra or {}),
    }


def http_request(port: int, path: str, *, token: str | None = TOKEN, method: str = "GET",
                 body: bytes | None = None, headers: dict | None = None) -> tuple[int, Message, str]:
    """Status, headers and body of a request to 127.0.0.1:`port`, error statuses included;
    with `token` as bearer unless it is None."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


@dataclass
class Bins:
    agent: pathlib.Path
    processor: pathlib.Path

    @staticmethod
    def from_env() -> "Bins":
        d = pathlib.Path(os.environ.get("SLUICE_BIN_DIR", REPO / "target" / "debug"))
        b = Bins((d / "sluice-agent").resolve(), (d / "sluice-processor").resolve())
        for p in (b.agent, b.processor):
            if not p.exists():
                raise RuntimeError(f"{p} is missing: build with `cargo build --bins` or set SLUICE_BIN_DIR")
        return b


def plugin_path(name: str) -> pathlib.Path:
    """A connector component built from plugins/ (scripts/test.sh builds them)."""
    d = pathlib.Path(os.environ.get("SLUICE_PLUGIN_DIR", REPO / "plugins" / "dist"))
    p = (d / f"{name}.wasm").resolve()
    if not p.exists():
        raise RuntimeError(f"{p} is missing: run plugins/build.sh or set SLUICE_PLUGIN_DIR")
    return p


def networked_source(plugin: str, port: int, config: dict) -> dict:
    """A source running the connector `plugin`, granted TCP to 127.0.0.1:`port`, restarted
    at once when it fails (the tests kill its peers)."""
    return {
        "type": "wasm", "plugin": str(plugin_path(plugin)),
        "allow_tcp": [f"127.0.0.1:{port}"],
        "max_rows": 500, "poll_interval": "20ms", "call_timeout": "20s",
        "restart_backoff_initial": "100ms", "restart_backoff_max": "500ms", "max_failures": 1000,
        "config": {"host": "127.0.0.1", "port": port, **config},
    }


def make_certs(bins: Bins, d: pathlib.Path, agents: list[str]) -> None:
    args = [str(bins.processor), "certs", "init", "--dir", str(d)]
    for a in agents:
        args += ["--agent", a]
    subprocess.run(args, check=True, capture_output=True)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def toml_key(k: str) -> str:
    """A key as TOML reads it back whole: bare when it can be, else quoted (`"db.test"`)."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def write_toml(path: pathlib.Path, doc: dict) -> None:
    """A small TOML writer for configs: top-level tables of scalars and nested tables."""
    lines: list[str] = []

    def table(prefix: str, t: dict) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict) or k == "_inline"}
        nested = {k: v for k, v in t.items() if isinstance(v, dict) and k != "_inline"}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{toml_key(k)} = {toml_value(v)}")
        lines.append("")
        for k, v in nested.items():
            if k == "fields":
                lines.append(f"[{prefix}.fields]")
                for fk, fv in v.items():
                    lines.append(f"{toml_key(fk)} = {toml_value(fv)}")
                lines.append("")
            else:
                key = toml_key(k)
                table(f"{prefix}.{key}" if prefix else key, v)

    table("", doc)
    path.write_text("\n".join(lines))


def run(args: list[str]) -> subprocess.CompletedProcess:
    """Run a short command to completion, capturing its output."""
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


# Every child process a test starts; the `reap` fixture kills what is left when it ends.
RUNNING: list["Proc"] = []


class Proc:
    """A child process whose output goes to a log file; killed at the end of the test."""

    def __init__(self, args: list[str], log: pathlib.Path, env=None, user=None, cwd=None):
        self.args = args
        self.log_path = log
        self.log = open(log, "ab")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, user=user, cwd=cwd)
        RUNNING.append(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def stop(self, timeout=30) -> int:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.p.returncode

    def wait(self, timeout) -> int:
        return self.p.wait(timeout)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


def http_status(port: int, path: str, token: str | None = TOKEN) -> tuple[int, str]:
    """Status and body of a GET on 127.0.0.1:`port`, error statuses included."""
    status, _, body = http_request(port, path, token=token)
    return status, body


def scrape(port: int) -> str:
    """The `/metrics` text of the endpoint on `port`."""
    status, _, body = http_request(port, "/metrics")
    if status != 200:
        raise OSError(f"/metrics answered {status}: {body}")
    return body


class Processor:
    """`sluice-processor serve` with its own data directory and ports."""

    def __init__(self, bins: Bins, certs: pathlib.Path, work: pathlib.Path,
                 data_dir: pathlib.Path | None = None, sections: dict | None = None, quic: dict | None = None,
                 api: dict | None = None, same_ports_as: "Processor | None" = None, **lander):
        self.bins = bins
        self.work = work
        self.data_dir = data_dir or work / "data"
        # Another configuration of the same processor keeps its addresses (agents know them).
        self.quic_port = same_ports_as.quic_port if same_ports_as else free_port(socket.SOCK_DGRAM)
        self.api_port = same_ports_as.api_port if same_ports_as else free_port()
        self.config = work / "processor.toml"
        write_toml(
            self.config,
            {
                "processor": {"data_dir": str(self.data_dir)},
                "catalog": {"name": "sluice"},
                "quic": {
                    "listen": f"127.0.0.1:{self.quic_port}",
                    "cert": str(certs / "server.pem"),
                    "key": str(certs / "server.key"),
                    "ca": str(certs / "ca.pem"),
                    **(quic or {}),
                },
                "api": api_section(self.api_port, api),
                "lander": {"commit_interval": "300ms", **lander},
                # Stream permissions deny by default; tests of them give their own.
                "access": {"allow_all": True},
                **(sections or {}),
            },
        )
        self.proc: Proc | None = None
        # PyIceberg catalog properties when the lake is not the default SQLite + local one.
        self.pyiceberg: dict | None = None
        # Called with a DuckDB connection before it reads the lake (S3 credentials).
        self.duckdb_setup = None

    def start(self) -> "Processor":
        self.proc = Proc(
            [str(self.bins.processor), "serve", "--config", str(self.config)],
            self.work / "processor.log",
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if not self.proc.alive():
                raise RuntimeError("processor exited:\n" + self.proc.output())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("processor did not become healthy:\n" + self.proc.output())

    def metrics(self) -> dict[str, float]:
        return parse_metrics(scrape(self.api_port))

    def ready(self) -> tuple[int, str]:
        return http_status(self.api_port, "/ready")

    def cli(self, command: str, *args, timeout=600) -> subprocess.CompletedProcess:
        """`sluice-processor COMMAND --config <this processor's> ARGS...`."""
        return subprocess.run([str(self.bins.processor), command, "--config", str(self.config), *map(str, args)],
                              capture_output=True, text=True, timeout=timeout)

    def wait_models(self, models: list[str], timeout=180) -> list[dict]:
        """Wait until each model exists and has read every snapshot of its inputs."""
        deadline = time.time() + timeout
        status = []
        while time.time() < deadline:
            r = self.cli("models", "list", "--json")
            assert r.returncode == 0, r.stderr
            status = json.loads(r.stdout)
            by_name = {s["model"]: s for s in status}
            if all(by_name[m]["rows"] is not None and by_name[m]["pending_snapshots"] == 0 for m in models):
                return status
            time.sleep(0.5)
        raise AssertionError(f"models did not catch up: {status}\n{self.proc.output()[-3000:]}")

    def kill(self):
        if self.proc:
            self.proc.kill()

    def stop(self):
        if self.proc:
            return self.proc.stop()

    @property
    def warehouse(self) -> pathlib.Path:
        return self.data_dir / "warehouse"

    @property
    def catalog_db(self) -> pathlib.Path:
        return self.data_dir / "catalog.db"


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def wait_until(check, timeout: float, what: str, interval=0.2):
    """Poll `check` until it returns a true value (returned); fail with `what` on timeout.
    A check that raises OSError (a server restarting) counts as not yet."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_in_turn(victims: list[str], agent: "Agent", start_agent, proc: "Processor", rng, gap) -> "Agent":
    """SIGKILL the agent or the processor, in the order `victims` names them, `gap` (min,
    max) seconds apart, and start it again (the agent through `start_agent`); returns the
    agent running at the end."""
    for victim in victims:
        time.sleep(rng.uniform(*gap))
        if victim == "agent":
            agent.proc.kill()
            agent = start_agent()
        else:
            proc.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            proc.start()
    return agent


def rss_bytes(proc: "Proc") -> int:
    """Resident memory of a running child process."""
    with open(f"/proc/{proc.p.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def simulator_source(total: int, rate: float | None = None, seed: int = 7, entities: int = 20, **extra) -> dict:
    """A deterministic 10-column telemetry source (simulated clock, so values are reproducible)."""
    src = {
        "type": "simulator",
        "total": total,
        "seed": seed,
        "entities": entities,
        "start_time": "2026-01-01T00:00:00Z",
        "rate": rate or 100000.0,
        **extra,
        "fields": {
            "ts": {"type": "timestamp"},
            "sample": {"type": "sequence"},
            "host": {"type": "fake", "fake": "hostname", "per": "entity"},
            "region": {"type": "choice", "values": ["eu", "us", "ap"], "weights": [5, 3, 2], "per": "entity"},
            "cpu": {"type": "normal", "mean": 40.0, "stddev": 10.0, "min": 0.0, "max": 100.0},
            "mem": {"type": "uniform", "min": 0.0, "max": 64.0},
            "load": {"type": "lognormal", "mu": 0.0, "sigma": 0.5},
            "errors": {"type": "poisson", "lambda": 1.5},
            "bytes": {"type": "uniform", "min": 0, "max": 1000000, "integer": True},
            "ok": {"type": "choice", "values": [True, False], "weights": [9, 1]},
        },
    }
    return src


class Agent:
    """`sluice-agent run` against a processor."""

    def __init__(self, bins: Bins, certs: pathlib.Path, work: pathlib.Path, processor: Processor,
                 sources: dict, agent_id="edge-01", batch=None, sink=None, transforms=None,
                 buffer=None, data_dir: pathlib.Path | None = None, api: dict | None = None,
                 network: dict | None = None):
        self.bins = bins
        self.work = work
        self.agent_id = agent_id
        self.data_dir = data_dir or work / f"agent-{agent_id}-data"
        self.api_port = free_port()
        self.config = work / f"agent-{agent_id}.toml"
        write_toml(
            self.config,
            {
                "agent": {"id": agent_id, "data_dir": str(self.data_dir)},
                "api": api_section(self.api_port, api),
                "batch": batch or {"max_rows": 5000, "max_age": "200ms"},
                **({"buffer": buffer} if buffer else {}),
                "sink": {
                    "backoff_initial": "50ms",
                    "backoff_max": "500ms",
                    # Each batch is signed with the agent's certificate key.
                    "cert": str(certs / f"agent-{agent_id}.pem"),
                    "key": str(certs / f"agent-{agent_id}.key"),
                    **(sink or {}),
                } if (sink or {}).get("type") == "kafka" else {
                    "type": "quic",
                    "endpoint": f"127.0.0.1:{processor.quic_port}",
                    "server_name": "localhost",
                    "ca": str(certs / "ca.pem"),
                    "cert": str(certs / f"agent-{agent_id}.pem"),
                    "key": str(certs / f"agent-{agent_id}.key"),
                    "backoff_initial": "50ms",
                    "backoff_max": "500ms",
                    **(sink or {}),
                },
                "sources": sources,
                **({"transforms": transforms} if transforms else {}),
                **({"network": network} if network else {}),
            },
        )
        self.proc: Proc | None = None

    def start(self) -> "Agent":
        self.proc = Proc([str(self.bins.agent), "run", "--config", str(self.config)],
                         self.work / f"agent-{self.agent_id}.log")
        return self

    def wait(self, timeout=120) -> int:
        assert self.proc
        return self.proc.wait(timeout)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(scrape(self.api_port))

    def wait_api(self, timeout=30) -> "Agent":
        """Wait until the agent's HTTP endpoint answers."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc and self.proc.alive(), self.proc.output() if self.proc else "not started"
            try:
                self.metrics()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("agent API did not come up:\n" + self.proc.output())

    def health(self) -> tuple[int, str]:
        return http_status(self.api_port, "/health")

    def ready(self) -> tuple[int, str]:
        return http_status(self.api_port, "/ready")

    def reference_file(self, source: str, out: pathlib.Path) -> None:
        """Write the rows the source generates, produced independently by `sluice-agent
        simulate`, to `out` (JSON lines, or Parquet for a `.parquet` name)."""
        subprocess.run(
            [str(self.bins.agent), "simulate", "--config", str(self.config), "--source", source, "--out", str(out)],
            check=True, capture_output=True,
        )

    def reference(self, source: str, out: pathlib.Path) -> list[dict]:
        """The rows the source generates (see `reference_file`), as JSON lines."""
        self.reference_file(source, out)
        with open(out) as f:
            return [json.loads(line) for line in f]


# ---- reading the lake back ------------------------------------------------------------

def pyiceberg_table(proc: Processor, name: str):
    from pyiceberg.catalog.sql import SqlCatalog

    if proc.pyiceberg is not None:
        return SqlCatalog("sluice", **proc.pyiceberg).load_table(name)
    cat = SqlCatalog("sluice", uri=f"sqlite:///{proc.catalog_db}", warehouse=f"file://{proc.warehouse}")
    return cat.load_table(name)


def snapshot_marks(table, snapshot=None) -> dict:
    """The progress marks a snapshot stores (`{"seq": {agent: n}, "ckpt": {agent: s},
    "kafka": {topic: {partition: offset}}}`): its `sluice.marks` base, inline JSON or a
    file, merged with the deltas of the snapshots back to the one that wrote that base."""
    snap = snapshot or table.current_snapshot()
    props = snap.summary.additional_properties
    base = props["sluice.marks"]

    def read(value: str) -> dict:
        if value.startswith("{"):
            return json.loads(value)
        with table.io.new_input(value).open() as f:
            return json.loads(f.read())

    marks = {"seq": {}, "ckpt": {}, "kafka": {}}
    chain = []
    while snap is not None and snap.summary.additional_properties.get("sluice.marks") == base:
        delta = snap.summary.additional_properties.get("sluice.marks.delta")
        if delta:
            chain.append(read(delta))
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id else None
    for record in [read(base)] + chain[::-1]:
        for agent, seq in record.get("seq", {}).items():
            if seq > marks["seq"].get(agent, 0):
                marks["seq"][agent] = seq
                if agent in record.get("ckpt", {}):
                    marks["ckpt"][agent] = record["ckpt"][agent]
        for topic, parts in record.get("kafka", {}).items():
            mine = marks["kafka"].setdefault(topic, {})
            for p, offset in parts.items():
                mine[int(p)] = max(mine.get(int(p), offset), offset)
    return marks


def duckdb_connection():
    import duckdb
    import duckdb_ext

    ext_dir = pathlib.Path(list(duckdb_ext.__path__)[0]) / "extensions"
    con = duckdb.connect()
    con.execute(f"SET extension_directory = '{ext_dir}'")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("LOAD avro")
    con.execute("LOAD iceberg")
    return con


def canonical(value):
    """One representation per value, whatever the reader: timestamps as UTC microseconds."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        return canonical(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    return value


def checksum(rows: list[dict], columns: list[str]) -> str:
    """Order-independent digest over every listed column of every row."""
    digests = sorted(
        hashlib.sha256(repr(tuple(canonical(r[c]) for c in columns)).encode()).hexdigest() for r in rows
    )
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def read_pyiceberg(proc: Processor, name: str) -> list[dict]:
    return pyiceberg_table(proc, name).scan().to_arrow().to_pylist()


def read_duckdb(proc: Processor, name: str) -> list[dict]:
    t = pyiceberg_table(proc, name)
    con = duckdb_connection()
    if proc.duckdb_setup:
        proc.duckdb_setup(con)
    cur = con.execute(f"SELECT * FROM iceberg_scan('{t.metadata_location}')")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def duckdb_files_read(proc: Processor, name: str, where: str) -> tuple[int, int]:
    """DuckDB's count of the rows of a table matching `where`, and how many data files its
    Iceberg scan read for it (from its query profile)."""
    t = pyiceberg_table(proc, name)
    con = duckdb_connection()
    if proc.duckdb_setup:
        proc.duckdb_setup(con)
    profile = proc.work / f"duckdb-profile-{time.monotonic_ns()}.json"
    con.execute("PRAGMA enable_profiling = 'json'")
    con.execute(f"PRAGMA profiling_output = '{profile}'")
    [(n,)] = con.execute(f"SELECT count(*) FROM iceberg_scan('{t.metadata_location}') WHERE {where}").fetchall()
    con.execute("PRAGMA disable_profiling")

    def scans(node):
        info = node.get("extra_info", {})
        if "Total Files Read" in info:
            yield int(info["Total Files Read"])
        for child in node.get("children", []):
            yield from scans(child)

    read = list(scans(json.loads(profile.read_text())))
    assert len(read) == 1, f"one Iceberg scan in the profile: {read}"
    return n, read[0]


class HttpServer:
    """An HTTP server on loopback for connectors to call: `answer(path)` gives each GET's
    (status, headers, body); HTTPS with `tls` = (certificate file, key file). Stop it with
    `close()`."""

    def __init__(self, answer, tls=None):
        import http.server
        import ssl

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, headers, body = answer(self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*[str(p) for p in tls])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---- external services: PostgreSQL and an S3-compatible server ------------------------

def _find_tool(env: str, name: str, globs: list[str]) -> pathlib.Path:
    """A server binary the test script installed; a missing one fails the test loudly."""
    if os.environ.get(env):
        return pathlib.Path(os.environ[env])
    for pattern in globs:
        for hit in sorted(pathlib.Path("/").glob(pattern.lstrip("/")), reverse=True):
            return hit
    found = shutil.which(name)
    if found:
        return pathlib.Path(found)
    raise RuntimeError(f"{name} not found (set {env}); scripts/test.sh installs it")


class Chromium:
    """Debian's Chromium, headless, on a page served on loopback: its DOM once the page's
    scripts have run, or a screenshot. Each run has its own profile and process group, which
    is killed when the run ends or times out."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--force-device-scale-factor=1"]

    def __init__(self, work: pathlib.Path):
        self.binary = _find_tool("SLUICE_CHROMIUM", "chromium", ["/usr/bin/chromium"])
        self.work = work

    def _run(self, url: str, what: list[str], budget_ms: int, timeout: float) -> str:
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.work)
        # The virtual time budget lets the page's fetches and timers run before the dump.
        args = [str(self.binary), *self.FLAGS, f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}", *what, url]
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        if p.returncode != 0:
            raise RuntimeError(f"chromium exited with {p.returncode}:\n{err[-3000:]}")
        return out

    def dom(self, url: str, budget_ms=4000, timeout=90) -> str:
        """The page's DOM, serialized, after `budget_ms` of (virtual) time."""
        return self._run(url, ["--dump-dom"], budget_ms, timeout)

    def screenshot(self, url: str, out: pathlib.Path, size=(1280, 900), budget_ms=4000, timeout=90) -> pathlib.Path:
        """A PNG of the page at `size` (width, height) after `budget_ms` of (virtual) time."""
        self._run(url, [f"--screenshot={out}", f"--window-size={size[0]},{size[1]}"], budget_ms, timeout)
        if not out.exists():
            raise RuntimeError(f"chromium wrote no screenshot to {out}")
        return out


class Postgres:
    """A throwaway PostgreSQL server on a free loopback port (Debian's binaries)."""

    def __init__(self, work: pathlib.Path, settings: dict | None = None):
        """`settings` are server parameters (`{"wal_level": "logical"}`)."""
        bindir = _find_tool("SLUICE_PG_BIN", "initdb", ["/usr/lib/postgresql/*/bin/initdb"]).parent
        self.port = free_port()
        # Outside pytest's private temp dirs: the server may run as another user.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.proc: Proc | None = None
        try:
            # initdb refuses to run as root: then the server runs as Debian's `postgres` user.
            user = None
            if os.geteuid() == 0:
                shutil.chown(self.dir, "postgres", "postgres")
                user = "postgres"
            r = subprocess.run([str(bindir / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "sluice"],
                               capture_output=True, text=True, user=user)
            assert r.returncode == 0, r.stderr
            self.proc = Proc([str(bindir / "postgres"), "-D", str(self.dir), "-p", str(self.port),
                              "-c", "listen_addresses=127.0.0.1", "-k", str(self.dir),
                              *(a for k, v in (settings or {}).items() for a in ("-c", f"{k}={v}"))],
                             work / "postgres.log", user=user)
            _wait_for(lambda: subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                             capture_output=True).returncode == 0, self.proc, "postgres")
            r = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "sluice",
                                "lake"], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        except BaseException:
            self.close()
            raise
        self.uri = f"postgres://sluice@127.0.0.1:{self.port}/lake"
        self.sqlalchemy_uri = f"postgresql+psycopg2://sluice@127.0.0.1:{self.port}/lake"

    def close(self) -> None:
        """Fast shutdown (ends the server's backends too), then remove its data."""
        if self.proc and self.proc.alive():
            self.proc.p.send_signal(signal.SIGINT)
            try:
                self.proc.p.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_for(ready, proc: Proc, what: str, timeout=30) -> None:
    """Poll `ready()` until true; fail at once if `proc` exits, or after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{what} exited:\n" + proc.output())
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start:\n" + proc.output())


def _listening(port: int) -> bool:
    """True once something accepts TCP connections on the loopback port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class S3Server:
    """s3s-fs (an S3 server from crates.io, storing objects in a directory) on loopback."""

    ACCESS_KEY = "sluice-test"
    SECRET_KEY = "sluice-test-secret"

    def __init__(self, work: pathlib.Path, bucket="lake"):
        binary = _find_tool("SLUICE_S3_SERVER", "s3s-fs",
                            [str(pathlib.Path.home() / ".cache/sluice/tools/bin/s3s-fs")])
        self.port = free_port()
        self.root = work / "s3"
        (self.root / bucket).mkdir(parents=True)
        self.bucket = bucket
        self.proc = Proc([str(binary), "--host", "127.0.0.1", "--port", str(self.port),
                          "--access-key", self.ACCESS_KEY, "--secret-key", self.SECRET_KEY, str(self.root)],
                         work / "s3.log")

        _wait_for(lambda: _listening(self.port), self.proc, "s3 server")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def processor_config(self) -> dict:
        return {"endpoint": self.endpoint, "region": "us-east-1", "access_key_id": self.ACCESS_KEY,
                "secret_access_key": self.SECRET_KEY, "allow_http": True}

    def pyiceberg_props(self) -> dict:
        return {"s3.endpoint": self.endpoint, "s3.access-key-id": self.ACCESS_KEY,
                "s3.secret-access-key": self.SECRET_KEY, "s3.region": "us-east-1",
                "s3.path-style-access": "true"}

    def duckdb_setup(self, con) -> None:
        con.execute("LOAD httpfs")
        con.execute(f"""CREATE SECRET s3 (TYPE s3, KEY_ID '{self.ACCESS_KEY}', SECRET '{self.SECRET_KEY}',
                        ENDPOINT '127.0.0.1:{self.port}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')""")


class Kafka:
    """tansu (a Kafka-compatible broker from crates.io) on a free loopback port, storing its
    topics in SQLite so that it can be stopped and started again without losing them."""

    def __init__(self, work: pathlib.Path):
        self.binary = _find_tool("SLUICE_KAFKA_BROKER", "tansu",
                                 [str(pathlib.Path.home() / ".cache/sluice/tools/bin/tansu")])
        self.port = free_port()
        self.dir = work / "kafka"
        self.dir.mkdir()
        self.work = work
        self.brokers = f"127.0.0.1:{self.port}"
        self.proc: Proc | None = None
        self.start()

    def start(self) -> "Kafka":
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = Proc([str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "sqlite://broker.db"], self.work / "kafka.log", cwd=self.dir)

        _wait_for(lambda: _listening(self.port), self.proc, "kafka broker")
        return self

    def create_topic(self, name: str, partitions: int = 3) -> None:
        r = subprocess.run([str(self.binary), "topic", "create", "--broker", f"tcp://{self.brokers}",
                            "--partitions", str(partitions), name], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()

    def kcat(self, *args: str, input: bytes | None = None, timeout=60) -> subprocess.CompletedProcess:
        """Debian's kcat against this broker (see `kcat_env`)."""
        return subprocess.run(["kcat", "-b", self.brokers, *args], input=input, capture_output=True,
                              timeout=timeout, env=kcat_env(self.work))


class Mosquitto:
    """Debian's mosquitto (the reference MQTT broker) on a free loopback port, with one
    user and password, and room for every message a test queues for an absent client."""

    USER = "sluice"
    PASSWORD = "mqtt-" + os.urandom(8).hex()

    def __init__(self, work: pathlib.Path):
        binary = _find_tool("SLUICE_MQTT_BROKER", "mosquitto", ["/usr/sbin/mosquitto"])
        passwd = _find_tool("SLUICE_MQTT_PASSWD", "mosquitto_passwd", ["/usr/bin/mosquitto_passwd"])
        self.port = free_port()
        self.dir = work / "mosquitto"
        self.dir.mkdir()
        passwords = self.dir / "passwords"
        r = subprocess.run([str(passwd), "-b", "-c", str(passwords), self.USER, self.PASSWORD],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwords}",
            # Run as whoever starts it (as root it would switch to a `mosquitto` user).
            *(["user root"] if os.geteuid() == 0 else []),
            "persistence false",
            "max_queued_messages 1000000",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "",
        ]))
        self.proc = Proc([str(binary), "-c", str(conf)], work / "mosquitto.log")
        _wait_for(lambda: _listening(self.port), self.proc, "mosquitto")

    def left_for(self, client_id: str, seconds: float = 3.0) -> int:
        """How many messages the broker still holds for `client_id`'s kept session (sent and
        not acknowledged, or queued): it sends them all to a client that takes the session
        over, here an MQTT 5 paho client."""
        import paho.mqtt.client as mqtt
        got = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(self.USER, self.PASSWORD)
        c.on_message = lambda client, userdata, message: got.append(message.mid)
        c.connect("127.0.0.1", self.port, clean_start=False)
        c.loop_start()
        time.sleep(seconds)
        c.disconnect()
        c.loop_stop()
        return len(got)

    def publisher(self) -> "MqttPublisher":
        """A connected paho-mqtt client (the Eclipse Python client) publishing as the user."""
        return MqttPublisher(self)


class MqttPublisher:
    """Publishes at QoS 1 through paho-mqtt; `close` returns once the broker acknowledged
    every message (mosquitto_pub -l is no substitute: it drops lines it has not sent yet
    when its input ends)."""

    def __init__(self, broker: Mosquitto):
        import paho.mqtt.client as mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sluice-test-publisher")
        self.client.username_pw_set(broker.USER, broker.PASSWORD)
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.sent = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        assert info.rc == 0, info.rc
        self.sent.append(info)

    def close(self, timeout=60) -> None:
        deadline = time.time() + timeout
        for info in self.sent:
            info.wait_for_publish(max(0.1, deadline - time.time()))
            assert info.is_published(), "the broker did not acknowledge a message"
        self.client.disconnect()
        self.client.loop_stop()


def kcat_env(work: pathlib.Path) -> dict:
    """Debian's kcat links Debian's librdkafka 2.0.2, which cannot parse tansu's ApiVersions
    v3 reply; it runs here on librdkafka 2.16 from the confluent-kafka wheel instead (the
    same library a Python producer would use)."""
    import confluent_kafka
    libs = pathlib.Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    assert found, f"no librdkafka in {libs}"
    d = work / "kcat-lib"
    d.mkdir(exist_ok=True)
    link = d / "librdkafka.so.1"
    if not link.exists():
        link.symlink_to(found[0])
    return {**os.environ, "LD_LIBRARY_PATH": str(d)}
