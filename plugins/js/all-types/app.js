// One column of every sluice:plugin@0.2.0 type, nested ones included, as JSON lines: the
// JavaScript side of the type round-trip tests (the same rows as
// plugins/examples/all-types and plugins/python/all_types).
//
// Build: npm install && npm run build   (componentize-js, see package.json)

import { log } from 'sluice:plugin/host@0.2.0';

const START_US = 1767225600000000n; // 2026-01-01T00:00:00Z
const START_DAY = 20454;

const COLUMNS = [
  ['i', 'int64', false],
  ['small', 'int32', false],
  ['ratio', 'float32', true],
  ['day', 'date', false],
  ['price', 'decimal(9,2)', false],
  ['blob', 'binary', false],
  ['local', 'timestamp', false],
  ['utc', 'timestamp-tz', false],
  ['tags', 'list<utf8>', false],
  ['labels', 'map<utf8,int32>', false],
  ['point', 'struct<x: float64, y: int64>', false],
];

let state = null;

const hex = (b) => b.toString(16).padStart(2, '0');

// JSON numbers lose precision past 2^53: microsecond timestamps are written as their
// exact decimal text.
function row(i) {
  const local = (START_US + BigInt(i) * 1000000n).toString();
  const utc = (START_US + BigInt(i) * 1000000n + 500000n).toString();
  const tags = [];
  for (let k = 0; k < i % 3; k++) tags.push(`t${k}`);
  return (
    `{"i":${i},"small":${7 * i - 100},"ratio":${i % 5 === 0 ? 'null' : i / 4},` +
    `"day":${START_DAY + i},"price":"${i}.05","blob":"${hex(i % 256)}${hex((3 * i) % 256)}",` +
    `"local":${local},"utc":${utc},"tags":${JSON.stringify(tags)},` +
    `"labels":${JSON.stringify(i % 2 === 0 ? { a: i, b: 2 * i } : {})},` +
    `"point":{"x":${i / 2},"y":${-i}}}`
  );
}

export const connector = {
  open(config, checkpoint) {
    let cfg;
    try {
      cfg = JSON.parse(config);
    } catch (e) {
      throw `bad config: ${e}`;
    }
    state = { total: Number(cfg.total), next: checkpoint ? Number(checkpoint) : 0 };
    log('info', `js all-types starting at row ${state.next}`);
    return COLUMNS.map(([name, type, nullable]) => ({ name, type, nullable }));
  },

  poll(maxRows) {
    const end = Math.min(state.next + maxRows, state.total);
    if (state.next >= end) return { batch: undefined, checkpoint: undefined, finished: true };
    let lines = '';
    for (let i = state.next; i < end; i++) lines += row(i) + '\n';
    state.next = end;
    return {
      batch: { tag: 'json-lines', val: lines },
      checkpoint: String(end),
      finished: end >= state.total,
    };
  },
};
