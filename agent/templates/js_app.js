// {{name}}: a Sluice source connector in JavaScript. Edit `open` (the schema) and `poll`.
// Build: npm install && npm run build

import { log } from 'sluice:plugin/host@0.3.0';

let next = 0;
let total = null;

export const connector = {
  open(config, checkpoint) {
    try {
      total = JSON.parse(config).total ?? null;
    } catch (e) {
      throw `bad config: ${e}`;
    }
    next = checkpoint ? Number(checkpoint) : 0;
    log('info', `{{name}} starting at row ${next}`);
    return [
      { name: 'n', type: 'int64', nullable: false },
      { name: 'message', type: 'utf8', nullable: false },
    ];
  },

  poll(maxRows) {
    let end = next + maxRows;
    if (total !== null) end = Math.min(end, total);
    if (next >= end) return { batch: undefined, checkpoint: undefined, finished: true };
    const lines = [];
    for (let i = next; i < end; i++) lines.push(JSON.stringify({ n: i, message: `hello #${i}` }));
    next = end;
    return {
      batch: { tag: 'json-lines', val: lines.join('\n') + '\n' },
      checkpoint: String(end),
      finished: total !== null && end >= total,
    };
  },

  // The lake holds every row up to `checkpoint`: release what the upstream keeps for them
  // (acknowledge messages, advance a replication slot). Nothing to do here.
  committed(checkpoint) {},
};
