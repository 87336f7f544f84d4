// The terminal progress bar: rate and ETA from recent progress, so a fast
// start (seeds) does not leave "ETA 00:00" over a slow network-bound tail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createProgress } from '../daemon/progress.js';

function capture(): { stream: Writable; last: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk, _enc, cb) {
      text += chunk;
      cb();
    },
  });
  return { stream, last: () => text.split('\r\x1b[2K').filter(Boolean).at(-1) ?? '' };
}

test('ETA follows the recent rate: 90% from seeds in 1 s, then 1 MiB/s over the network', () => {
  const MiB = 1024 * 1024;
  let now = 0;
  const out = capture();
  const bar = createProgress({
    label: 'extract',
    total: 100 * MiB,
    interactive: true,
    stream: out.stream,
    clock: () => now,
  });
  now = 1000;
  bar.update(90 * MiB);
  for (let s = 1; s <= 8; s++) {
    now = 1000 + s * 1000;
    bar.update(90 * MiB + s * MiB);
  }
  // 2 MiB left at 1 MiB/s: about 2 s, not the 00:00 an average since the start gives.
  const line = out.last();
  assert.match(line, /98\.0% /);
  assert.match(line, / 1\.0 MiB\/s ETA 00:0[23]/, line);
});

test('nothing is drawn when not interactive', () => {
  const out = capture();
  const bar = createProgress({ label: 'x', total: 10, interactive: false, stream: out.stream });
  bar.update(5);
  bar.finish('done');
  assert.equal(out.last(), '');
});
