"""{{name}}: a Sluice source connector in Python. Edit `open` (the schema) and `poll` (the rows).

Build: componentize-py -d wit -w source componentize app -o {{name}}.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


class _State:
    """Module-level state: componentize-py may create a fresh `Connector` for every call."""

    next = 0
    total = None


S = _State()


class Connector(exports.Connector):
    def open(self, config: str, checkpoint: str | None) -> list[types.Column]:
        try:
            S.total = json.loads(config).get("total")
            S.next = int(checkpoint) if checkpoint else 0
        except (ValueError, TypeError) as e:
            raise Err(f"bad config or checkpoint: {e}")
        host.log(types.Level.INFO, f"{{name}} starting at row {S.next}")
        return [
            types.Column("n", "int64", False),
            types.Column("message", "utf8", False),
        ]

    def poll(self, max_rows: int) -> types.PollResult:
        end = S.next + max_rows
        if S.total is not None:
            end = min(end, S.total)
        if S.next >= end:
            return types.PollResult(None, None, True)
        lines = "".join(json.dumps({"n": i, "message": f"hello #{i}"}) + "\n" for i in range(S.next, end))
        S.next = end
        return types.PollResult(types.Batch_JsonLines(lines), str(end), S.total is not None and end >= S.total)

    def committed(self, checkpoint: str) -> None:
        # The lake holds every row up to this checkpoint: release what the upstream keeps
        # for them (acknowledge messages, advance a replication slot). Nothing to do here.
        pass
