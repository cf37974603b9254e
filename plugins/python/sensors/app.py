"""Simulated sensor readings, returned as JSON lines (the easy path).

Row i: sensor "s-NNN" (i mod sensors), a reading that is null every 50th row, and an event
time one second apart from 2026-01-01T00:00:00Z. The checkpoint is the next row index, so a
restarted connector resumes exactly after what the lake holds.

Build: componentize-py -d ../../../wit -w source componentize app -o sensors.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


class _State:
    """The connector's state. Module-level: componentize-py may create a fresh `Connector`
    for every call, so nothing may live on `self`."""

    total: int | None = None
    sensors: int = 10
    next: int = 0


S = _State()


class Connector(exports.Connector):
    def open(self, config: str, checkpoint: str | None) -> list[types.Column]:
        try:
            cfg = json.loads(config)
            S.total = cfg.get("total")
            S.sensors = int(cfg.get("sensors", 10))
            S.next = int(checkpoint) if checkpoint else 0
        except (ValueError, TypeError) as e:
            raise Err(f"bad config or checkpoint: {e}")
        host.log(types.Level.INFO, f"python sensors starting at row {S.next}")
        return [
            types.Column("ts", types.ColumnType.TIMESTAMP_MICROS, False),
            types.Column("seq", types.ColumnType.INT64, False),
            types.Column("sensor", types.ColumnType.UTF8, False),
            types.Column("reading", types.ColumnType.FLOAT64, True),
        ]

    def poll(self, max_rows: int) -> types.PollResult:
        end = S.next + max_rows
        if S.total is not None:
            end = min(end, S.total)
        if S.next >= end:
            return types.PollResult(None, None, True)
        lines = []
        for i in range(S.next, end):
            reading = None if i % 50 == 0 else (i * 37 % 1000) / 10
            lines.append(json.dumps({
                "ts": START_US + i * 1_000_000,
                "seq": i,
                "sensor": f"s-{i % S.sensors:03d}",
                "reading": reading,
            }))
        S.next = end
        finished = S.total is not None and end >= S.total
        return types.PollResult(types.Batch_JsonLines("\n".join(lines) + "\n"), str(end), finished)
