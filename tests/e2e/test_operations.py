"""Operating Sluice: health that tells the truth, metrics that agree with the lake."""

import json
import os
import pathlib
import re
import signal
import subprocess
import time

from harness import (TOKEN, Agent, Chromium, Processor, duckdb_connection, http_status, pyiceberg_table, scrape,
                     simulator_source, wait_until)

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


def test_metrics_agree_with_the_lake(bins, certs, workdir):
    """Scraped throughout a run, the counters only grow and never run ahead of each other
    along the path (produced ≥ batched, sent ≥ acked, received ≥ committed, and what the
    agent counts acked the processor counts committed); at the end rows produced = batched
    = acked = committed = rows in bronze, and the table gauges show the table."""
    n = 150_000
    proc = Processor(bins, certs, workdir).start()
    # A slow second source keeps the agent (and its endpoint) up after the first is done.
    agent = Agent(bins, certs, workdir, proc, {
        "telemetry": simulator_source(n, rate=40_000),
        "heartbeat": simulator_source(10**9, rate=5),
    }).start().wait_api()
    names = {
        "produced": 'sluice_agent_source_rows_total{source="telemetry"}',
        "batched": 'sluice_agent_batched_rows_total{stream="telemetry"}',
        "sent": 'sluice_agent_sent_rows_total{stream="telemetry"}',
        "acked": 'sluice_agent_acked_rows_total{stream="telemetry"}',
        "received": 'sluice_processor_received_rows_total{table="bronze.telemetry"}',
        "committed": 'sluice_processor_committed_rows_total{table="bronze.telemetry"}',
    }
    previous: dict[str, float] = {}
    scrapes = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        # Scrapes are not atomic: processor, agent, processor, so that each comparison of the
        # two reads the downstream count first where it trails (received ≤ sent) and last
        # where it leads (committed ≥ acked: a batch is acked only once committed).
        p1, a, p2 = proc.metrics(), agent.metrics(), proc.metrics()
        now = {k: (p1 if k == "received" else p2 if k == "committed" else a).get(v, 0) for k, v in names.items()}
        assert now["produced"] >= now["batched"] >= now["acked"] and now["sent"] >= now["acked"], now
        assert now["sent"] >= now["received"], now  # received read before sent
        assert now["committed"] >= now["acked"], now  # committed read after acked
        assert p2.get(names["received"], 0) >= now["committed"], now
        for k, v in now.items():
            assert v >= previous.get(k, 0), (k, previous, now)
        previous = now
        scrapes += 1
        if now["acked"] >= n:
            break
        time.sleep(0.3)
    assert scrapes >= 5, f"only {scrapes} scrapes during the run"
    a, p = agent.metrics(), proc.metrics()
    assert a[names["produced"]] == a[names["batched"]] == a[names["acked"]] == n, a
    assert a.get('sluice_agent_duplicate_rows_total{stream="telemetry"}', 0) == 0
    assert p[names["committed"]] == n and p[names["received"]] >= n, p
    t = pyiceberg_table(proc, "bronze.telemetry")
    bronze = duckdb_connection().execute(f"SELECT count(*) FROM iceberg_scan('{t.metadata_location}')").fetchone()[0]
    assert bronze == n, f"{bronze} rows in bronze"

    # The table gauges are refreshed from the catalog every 10 s.
    def table_gauges():
        m = proc.metrics()
        return m.get('sluice_processor_table_rows{table="bronze.telemetry"}') == n and m
    m = wait_until(table_gauges, 30, "the table gauges to show every row")
    assert m['sluice_processor_table_data_files{table="bronze.telemetry"}'] >= 1
    assert m['sluice_processor_table_snapshots{table="bronze.telemetry"}'] >= 1
    assert m['sluice_processor_table_size_bytes{table="bronze.telemetry"}'] > 0
    assert m['sluice_processor_table_manifests{table="bronze.telemetry"}'] >= 1
    assert m['sluice_processor_table_metadata_bytes{table="bronze.telemetry"}'] > 0
    assert m['sluice_processor_table_metadata_files{table="bronze.telemetry"}'] >= 3
    assert abs(time.time() - m['sluice_processor_table_last_commit_timestamp_seconds{table="bronze.telemetry"}']) < 120
    # Freshness: the heartbeat keeps landing, so its table stays fresh; the finished
    # telemetry stream ages.
    assert m['sluice_processor_table_freshness_seconds{table="bronze.heartbeat"}'] < 10, m
    assert m['sluice_processor_table_freshness_seconds{table="bronze.telemetry"}'] >= 0, m
    # Everything of the finished stream is acknowledged: nothing unacked has an age.
    assert agent.metrics().get('sluice_agent_oldest_unacked_age_seconds{stream="telemetry"}') == 0

    # The status report: the agent with its streams, the table with its freshness, and a
    # history whose landing rate saw the run (sampled every 10 s).
    def status_with_history():
        s = json.loads(http_status(proc.api_port, "/api/status")[1])
        return any(h["rows_per_second"] > 0 for h in s["history"]) and s
    status = wait_until(status_with_history, 30, "the status history to show the run")
    edge = next(a for a in status["agents"] if a["agent"] == "edge-01")
    assert edge["via"] == "quic" and edge["streams"] == ["bronze.heartbeat", "bronze.telemetry"], edge
    assert edge["rows"] >= n and edge["seconds_since_seen"] < 10, edge
    telemetry = next(t for t in status["tables"] if t["table"] == "bronze.telemetry")
    assert telemetry["rows"] == n and telemetry["data_files"] >= 1 and telemetry["snapshots"] >= 1, telemetry
    assert telemetry["freshness_seconds"] is not None, telemetry
    assert telemetry["manifests"] >= 1 and telemetry["metadata_bytes"] > 0, telemetry
    assert all(h["at_ms"] <= status["now_ms"] for h in status["history"])

    # Every series the Grafana dashboard queries is one the binaries register (a family
    # with no series yet is left out of a scrape, so the registrations are read from the
    # source); those this run exposes are among them.
    root = pathlib.Path(__file__).parents[2]
    registered = registered_series(root / "agent/src/telemetry/metrics.rs", "sluice_agent") | \
        registered_series(root / "processor/src/telemetry/metrics.rs", "sluice_processor")
    exposed = exposed_series(agent.api_port) | exposed_series(proc.api_port)
    assert names["acked"].split("{")[0] in exposed and exposed <= registered, sorted(exposed - registered)
    dashboard = json.loads((root / "examples/grafana/sluice-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = {name for e in exprs for name in re.findall(r"\bsluice_[a-z_]+", e)}
    assert len(queried) > 20 and queried <= registered, sorted(queried - registered)
    assert agent.proc.stop() == 0, agent.proc.output()[-3000:]


SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def exposed_series(port: int) -> set[str]:
    """Sample names a `/metrics` endpoint declares (`# TYPE` lines)."""
    text = scrape(port)
    return {name + suffix
            for kind_line in text.splitlines() if kind_line.startswith("# TYPE ")
            for _, _, name, kind in [kind_line.split(" ")]
            for suffix in SUFFIXES.get(kind, [""])}


def registered_series(source: pathlib.Path, prefix: str) -> set[str]:
    """Sample names a binary's metrics module registers: `register("name", "help",
    m.field.clone())`, typed by the field's declaration."""
    text = source.read_text()
    out = set()
    for name, field in re.findall(r'register\(\s*"([a-z_]+)",\s*"[^"]*",\s*m\.([a-z_]+)\.clone\(\)', text):
        declared = re.search(rf"\n\s*{field}: ([^\n]+),", text).group(1)
        kind = "histogram" if "Histogram" in declared else "gauge" if "Gauge" in declared else "counter"
        out |= {f"{prefix}_{name}{suffix}" for suffix in SUFFIXES[kind]}
    return out


def test_top_and_tap_show_a_running_agent(bins, certs, workdir):
    """`sluice-agent tap STREAM` prints records flowing through the stream as JSON lines;
    `sluice-agent top` shows per-source and per-stream rates read from the agent."""
    proc = Processor(bins, certs, workdir).start()
    agent = Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(10**9, rate=2_000)}).start().wait_api()
    acked = 'sluice_agent_acked_rows_total{stream="telemetry"}'
    wait_until(lambda: agent.metrics().get(acked, 0) > 0, 60, "rows to be acknowledged")

    # The token from the environment here, from --token below.
    tap = subprocess.run([str(bins.agent), "tap", "telemetry", "--config", str(agent.config), "-n", "7"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "SLUICE_TOKEN": TOKEN})
    assert tap.returncode == 0, tap.stderr
    rows = [json.loads(line) for line in tap.stdout.splitlines()]
    assert len(rows) == 7, tap.stdout
    assert {"ts", "sample", "host", "region", "cpu"} <= rows[0].keys(), rows[0]
    samples = [r["sample"] for r in rows]
    assert samples == sorted(samples), "rows in the order they flow"

    missing = subprocess.run([str(bins.agent), "tap", "nosuch", "--url", f"127.0.0.1:{agent.api_port}",
                              "--token", TOKEN], capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0
    assert 'no stream "nosuch"' in missing.stderr and "telemetry" in missing.stderr, missing.stderr

    top = subprocess.run([str(bins.agent), "top", "--url", f"127.0.0.1:{agent.api_port}", "--once",
                          "--interval", "2s", "--token", TOKEN], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert lines[0].endswith(": READY"), top.stdout
    source = next(line for line in lines if line.startswith("telemetry"))
    rate = float(source.split()[1].replace(",", ""))
    assert 1_000 <= rate <= 4_000, f"about 2,000 rows/s expected:\n{top.stdout}"
    headers = [line.split()[0] for line in lines if line and line.split()[0] in ("SOURCE", "STREAM")]
    assert headers == ["SOURCE", "STREAM"], top.stdout


def test_status_page_renders_charts_in_a_browser(bins, certs, workdir):
    """The processor's status page (`/`), opened in headless Chromium while an agent ships:
    it says ready, lists the agent and the table, and both charts draw the sampled history:
    in the screenshot, a line of each series' colour runs across its chart (an empty chart
    shows only a grey note)."""
    from PIL import Image

    chromium = Chromium(workdir)
    proc = Processor(bins, certs, workdir).start()
    Agent(bins, certs, workdir, proc, {"telemetry": simulator_source(10**9, rate=3_000)}).start().wait_api()

    def history():
        s = json.loads(http_status(proc.api_port, "/api/status")[1])
        landed = [h for h in s["history"] if h["rows_per_second"] > 0 and h["freshness_seconds"] is not None]
        return len(landed) >= 3 and s
    # The history is sampled every 10 s.
    wait_until(history, 90, "three samples of the run in the status history", interval=1)

    # The page itself loads without a token; it takes one from the address's fragment.
    url = f"http://127.0.0.1:{proc.api_port}/#token={TOKEN}"
    status, page = http_status(proc.api_port, "/", token=None)
    assert status == 200 and "<title>Sluice processor</title>" in page, page[:300]
    assert http_status(proc.api_port, "/status") == (200, page)

    # Without a token the page shows no data, only the form asking for one.
    dom = chromium.dom(f"http://127.0.0.1:{proc.api_port}/")
    assert '<form id="login">' in dom and "edge-01" not in dom, dom[:3000]
    assert "HTTP 401" in dom, dom[:3000]

    dom = chromium.dom(url)
    assert re.search(r'id="state" class="state ok">ready<', dom), dom[:2000]
    assert '<form id="login" hidden="">' in dom, dom[:2000]
    charts = re.search(r'<div class="charts">.*?<section>', dom, re.S).group(0)
    points = dict(re.findall(r'<div class="chart" id="chart-(\w+)">.*?<svg [^>]*data-points="(\d+)"', charts, re.S))
    assert set(points) == {"rows", "freshness"} and all(int(n) >= 3 for n in points.values()), points
    assert charts.count('class="series"') >= 2 and "no data yet" not in charts, charts
    agents = re.search(r'<table id="agents">.*?</table>', dom, re.S).group(0)
    tables = re.search(r'<table id="tables">.*?</table>', dom, re.S).group(0)
    assert "<td>edge-01</td><td>quic</td><td>bronze.telemetry</td>" in agents, agents
    assert "<td>bronze.telemetry</td>" in tables, tables
    # Its metadata size is shown (a number of bytes with a unit, not a placeholder).
    row = re.search(r"<td>bronze\.telemetry</td>(.*?)</tr>", tables, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert len(cells) == 8 and re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", cells[6]), cells

    # Each series is drawn in its colour from the page's own style sheet.
    colours = {name: tuple(bytes.fromhex(hex_rgb)) for name, hex_rgb in
               re.findall(r"--(rows|fresh): #([0-9a-f]{6})", page)}
    assert set(colours) == {"rows", "fresh"}, colours
    shot = Image.open(chromium.screenshot(url, workdir / "status.png")).convert("RGB")
    width, height = shot.size
    seen = {name: (set(), set()) for name in colours}  # the columns and rows of its pixels
    for i, pixel in enumerate(shot.get_flattened_data()):
        for name, colour in colours.items():
            if all(abs(a - b) <= 40 for a, b in zip(pixel, colour)):
                seen[name][0].add(i % width)
                seen[name][1].add(i // width)
    for name, (xs, ys) in seen.items():
        # Each chart is about 600 px wide here; the history spans it from its first sample.
        assert xs and max(xs) - min(xs) >= 300 and len(xs) >= 200, \
            f"the {name} chart draws no line across it ({len(xs)} columns, see {workdir / 'status.png'})"
        assert max(ys) < height / 2, f"the {name} line is not in the charts at the top"
    # The landing rate rises from the first sample (taken at start, nothing landed yet) to
    # some 3,000 rows/s: plotted to scale, its line climbs most of the chart's height.
    xs, ys = seen["rows"]
    assert max(ys) - min(ys) >= 60, f"the rows line is flat ({min(ys)}..{max(ys)})"
