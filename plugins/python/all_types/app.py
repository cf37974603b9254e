"""One column of every sluice:plugin@0.2.0 type, nested ones included, as JSON lines: the
Python side of the type round-trip tests (the same rows as plugins/examples/all-types).

Row i: i, small = 7i - 100 (int32), ratio = i / 4 (float32, null every 5th row), day =
2026-01-01 + i days, price = i.05 (decimal(9,2)), blob = bytes [i % 256, 3i % 256], local and
utc = 2026-01-01 + i s (+ 0.5 s for utc), tags = ["t0", ...] (i % 3 of them), labels =
{"a": i, "b": 2i} for even rows, point = {x: i / 2, y: -i}. The checkpoint is the next row.

Build: componentize-py -d ../../../wit/v0.2 -w source componentize app -o all_types.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
START_DAY = 20_454


class _State:
    """Module-level: componentize-py may create a fresh `Connector` for every call."""

    total: int = 0
    next: int = 0


S = _State()

COLUMNS = [
    ("i", "int64", False),
    ("small", "int32", False),
    ("ratio", "float32", True),
    ("day", "date", False),
    ("price", "decimal(9,2)", False),
    ("blob", "binary", False),
    ("local", "timestamp", False),
    ("utc", "timestamp-tz", False),
    ("tags", "list<utf8>", False),
    ("labels", "map<utf8,int32>", False),
    ("point", "struct<x: float64, y: int64>", False),
]


def row(i: int) -> dict:
    return {
        "i": i,
        "small": 7 * i - 100,
        "ratio": None if i % 5 == 0 else i / 4,
        "day": START_DAY + i,
        "price": f"{i}.05",
        "blob": f"{i % 256:02x}{3 * i % 256:02x}",
        "local": START_US + i * 1_000_000,
        "utc": START_US + i * 1_000_000 + 500_000,
        "tags": [f"t{k}" for k in range(i % 3)],
        "labels": {"a": i, "b": 2 * i} if i % 2 == 0 else {},
        "point": {"x": i / 2, "y": -i},
    }


class Connector(exports.Connector):
    def open(self, config: str, checkpoint: str | None) -> list[types.Column]:
        try:
            S.total = int(json.loads(config)["total"])
            S.next = int(checkpoint) if checkpoint else 0
        except (ValueError, TypeError, KeyError) as e:
            raise Err(f"bad config or checkpoint: {e}")
        host.log(types.Level.INFO, f"python all-types starting at row {S.next}")
        return [types.Column(name, ty, nullable) for name, ty, nullable in COLUMNS]

    def poll(self, max_rows: int) -> types.PollResult:
        end = min(S.next + max_rows, S.total)
        if S.next >= end:
            return types.PollResult(None, None, True)
        lines = "".join(json.dumps(row(i)) + "\n" for i in range(S.next, end))
        S.next = end
        return types.PollResult(types.Batch_JsonLines(lines), str(end), end >= S.total)
