// Simulated sensor readings as typed columns (the fast path), in JavaScript.
//
// Row i: sensor "s-NNN" (i mod sensors), a reading that is null every 50th row, and an event
// time one second apart from 2026-01-01T00:00:00Z. The checkpoint is the next row index.
//
// Build: npm install && npm run build   (jco componentize, see package.json)

import { log } from 'sluice:plugin/host@0.1.0';

const START_US = 1767225600000000n; // 2026-01-01T00:00:00Z

let state = null;

function utf8Column(strings) {
  const enc = new TextEncoder();
  const parts = strings.map((s) => enc.encode(s));
  const offsets = new Uint32Array(parts.length + 1);
  let len = 0;
  parts.forEach((p, i) => {
    len += p.length;
    offsets[i + 1] = len;
  });
  const data = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    data.set(p, at);
    at += p.length;
  }
  return { offsets, data };
}

export const connector = {
  open(config, checkpoint) {
    let cfg;
    try {
      cfg = JSON.parse(config);
    } catch (e) {
      throw `bad config: ${e}`;
    }
    state = {
      total: cfg.total ?? null,
      sensors: cfg.sensors ?? 10,
      next: checkpoint ? Number(checkpoint) : 0,
    };
    log('info', `js sensors starting at row ${state.next}`);
    return [
      { name: 'ts', type: 'timestamp-micros', nullable: false },
      { name: 'seq', type: 'int64', nullable: false },
      { name: 'sensor', type: 'utf8', nullable: false },
      { name: 'reading', type: 'float64', nullable: true },
    ];
  },

  poll(maxRows) {
    let end = state.next + maxRows;
    if (state.total !== null) end = Math.min(end, state.total);
    if (state.next >= end) return { batch: undefined, checkpoint: undefined, finished: true };
    const n = end - state.next;
    const ts = new BigInt64Array(n);
    const seq = new BigInt64Array(n);
    const readings = new Float64Array(n);
    const valid = new Array(n);
    const sensors = new Array(n);
    for (let k = 0; k < n; k++) {
      const i = state.next + k;
      ts[k] = START_US + BigInt(i) * 1000000n;
      seq[k] = BigInt(i);
      valid[k] = i % 50 !== 0;
      readings[k] = valid[k] ? ((i * 37) % 1000) / 10 : 0;
      sensors[k] = `s-${String(i % state.sensors).padStart(3, '0')}`;
    }
    state.next = end;
    return {
      batch: {
        tag: 'columns',
        val: [
          { values: { tag: 'timestamp-micros', val: ts } },
          { values: { tag: 'int64', val: seq } },
          { values: { tag: 'utf8', val: utf8Column(sensors) } },
          { values: { tag: 'float64', val: readings }, validity: valid },
        ],
      },
      checkpoint: String(end),
      finished: state.total !== null && end >= state.total,
    };
  },
};
