"""Networked source in Python: polls a JSON API page by page through `wasi:http`, the same
protocol as the Rust `examples/http-poll`. Each page is `GET <url>?cursor=<c>&limit=<n>`,
answered with `{"items": [...], "next": "<cursor>"}`; the checkpoint is that cursor, so a
restarted agent asks again right after what the lake holds. A 429 or a 5xx is retried
after its `Retry-After` (seconds), or else after a backoff doubling from `backoff_ms`;
meanwhile polls return nothing. The agent must grant the URL (`allow_http`).

Config: `url`, `columns` ([{name, type, nullable}]), optional `headers`, `page_size`,
`backoff_ms`, `max_backoff_ms`, `timeout_ms`.

Build (see `componentize-args`): the world is `sluice:plugin/source@0.3.0` merged with
`wasi:http/imports@0.2.12`, whose WIT is in `wit/wasi-0.2.12/`.
"""

import json
import time
import urllib.parse

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import host, outgoing_handler, streams
from wit_world.imports import sluice_plugin_types as types
from wit_world.imports import wasi_http_types as http_types


class _State:
    """Module-level: componentize-py may make a fresh `Connector` for each call."""

    cfg: dict = {}
    https = False
    authority = ""
    path = "/"
    cursor: str | None = None
    retry_at = 0.0
    backoff = 0.5


S = _State()


class Connector(exports.Connector):
    def open(self, config: str, checkpoint: str | None) -> list[types.Column]:
        try:
            cfg = json.loads(config)
            url = urllib.parse.urlsplit(cfg["url"])
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"url {cfg['url']!r} must be http:// or https:// with a host")
            # 0.2+ writes a column's type as text; the agent checks it.
            columns = [types.Column(c["name"], str(c["type"]), bool(c.get("nullable", True)))
                       for c in cfg["columns"]]
        except (KeyError, ValueError, TypeError) as e:
            raise Err(f"bad config: {e!r}")
        if not columns:
            raise Err("config: columns must name at least one column")
        S.cfg = cfg
        S.https = url.scheme == "https"
        S.authority = url.netloc
        S.path = url.path or "/"
        S.cursor = checkpoint
        S.retry_at = 0.0
        S.backoff = cfg.get("backoff_ms", 500) / 1000
        host.log(types.Level.INFO, f"python http-poll from cursor {checkpoint!r}")
        return columns

    def poll(self, max_rows: int) -> types.PollResult:
        if time.monotonic() < S.retry_at:
            return types.PollResult(None, None, False)
        limit = max(1, min(max_rows, int(S.cfg.get("page_size", 1000))))
        query = {"limit": limit} if S.cursor is None else {"cursor": S.cursor, "limit": limit}
        status, retry_after, body = get(f"{S.path}?{urllib.parse.urlencode(query)}")
        if status == 429 or 500 <= status < 600:
            cap = S.cfg.get("max_backoff_ms", 60_000) / 1000
            wait = min(retry_after if retry_after is not None else S.backoff, cap)
            S.backoff = min(S.backoff * 2, cap)
            host.log(types.Level.WARN, f"{S.cfg['url']} answered {status}; retrying in {wait} s")
            S.retry_at = time.monotonic() + wait
            return types.PollResult(None, None, False)
        if status != 200:
            raise Err(f"{S.cfg['url']} answered {status}: {body[:200]!r}")
        S.backoff = S.cfg.get("backoff_ms", 500) / 1000
        try:
            page = json.loads(body)
            rows = page["items"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f"the page is not the expected JSON: {e!r}")
        if len(rows) > limit:
            raise Err(f"asked for {limit} rows, got {len(rows)}")
        nxt = page.get("next")
        nxt = None if nxt is None else str(nxt)
        if not rows:
            if nxt is not None:
                S.cursor = nxt
            return types.PollResult(None, None, False)
        if nxt is None:
            raise Err("a page of rows without a next cursor")
        S.cursor = nxt
        lines = "\n".join(json.dumps(r) for r in rows)
        return types.PollResult(types.Batch_JsonLines(lines), nxt, False)

    def committed(self, checkpoint: str) -> None:
        # An HTTP API keeps nothing for us: nothing to release.
        return None


def get(path: str) -> tuple[int, int | None, bytes]:
    """GET `path` (with its query): status, Retry-After in seconds, body."""
    headers = http_types.Fields.from_list(
        [(k, v.encode()) for k, v in S.cfg.get("headers", {}).items()])
    req = http_types.OutgoingRequest(headers)
    req.set_method(http_types.Method_Get())
    req.set_scheme(http_types.Scheme_Https() if S.https else http_types.Scheme_Http())
    req.set_authority(S.authority)
    req.set_path_with_query(path)
    options = http_types.RequestOptions()
    ns = int(S.cfg.get("timeout_ms", 10_000)) * 1_000_000
    options.set_connect_timeout(ns)
    options.set_first_byte_timeout(ns)
    options.set_between_bytes_timeout(ns)
    out_body = req.body()
    try:
        pending = outgoing_handler.handle(req, options)
    except Err as e:
        raise Err(refused(e.value))
    http_types.OutgoingBody.finish(out_body, None)
    pending.subscribe().block()
    # option<result<result<incoming-response, error-code>>>: ready, taken once, answered.
    answer = pending.get()
    if not isinstance(answer, Ok) or not isinstance(answer.value, Ok):
        raise Err(refused(answer.value.value if isinstance(answer, Ok) else answer))
    resp = answer.value.value
    status = resp.status()
    retry = resp.headers().get("retry-after")
    retry_after = None
    if retry:
        try:
            retry_after = int(retry[0].decode().strip())
        except ValueError:
            pass
    incoming = resp.consume()
    stream = incoming.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(65536))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise Err(f"reading the body: {e.value!r}")
    return status, retry_after, b"".join(chunks)


def refused(error) -> str:
    if isinstance(error, http_types.ErrorCode_HttpRequestDenied):
        return "the agent refused the request: no allow_http grant covers it"
    return f"request failed: {error!r}"
