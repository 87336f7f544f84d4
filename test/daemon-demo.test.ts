// `deltad demo`, the README's main command, run as a user would: it must exit
// 0, report a verified SHA-256, and have fetched only a small part of v2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/repo.js';
import { run, SYSTEMD_PULL } from './helpers/sysupdate-client.js';

for (const client of ['http', 'systemd-pull'] as const) {
  test(`deltad demo --client ${client}: verified, mostly reused`, { timeout: 120_000 }, async (t) => {
    if (client === 'systemd-pull' && !SYSTEMD_PULL) {
      if (process.env.CI) assert.fail('systemd-pull is required under CI');
      return t.skip('systemd-pull is not installed');
    }
    const r = await run(
      process.execPath,
      [join(REPO_ROOT, 'dist/daemon/cli.js'), 'demo', '--size', '12', '--client', client],
      100_000,
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /verified {2}SHA-256 [0-9a-f]{64} matches SHA256SUMS/);
    const fetched = /fetched +[\d.]+ \w+ \(([\d.]+)%\)/.exec(r.stdout);
    const reused = /reused +[\d.]+ \w+ \(([\d.]+)%\)/.exec(r.stdout);
    assert.ok(fetched && reused, r.stdout);
    assert.ok(Number(fetched[1]) < 30, `fetched ${fetched[1]}% of v2`);
    assert.ok(Number(reused[1]) > 70, `reused ${reused[1]}% of v2`);
    assert.ok(!/\x1b\[/.test(r.stdout + r.stderr), 'no terminal codes when not on a TTY');
  });
}
