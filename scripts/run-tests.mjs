// Runs every compiled test file (dist/test/**/*.test.js) with node's test runner,
// on the Node runtime package.json pins (node_modules/.bin/node) when installed,
// whichever node started this script.
// Optional filter: DELTAD_TEST=substring (or arguments) selects test files by name.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}
const filters = process.argv.slice(2).concat(process.env.DELTAD_TEST ? [process.env.DELTAD_TEST] : []);
let files = walk('dist/test').sort();
if (filters.length) files = files.filter((f) => filters.some((s) => f.includes(s)));
if (files.length === 0) {
  console.error('run-tests: no test files matched');
  process.exit(1);
}
const bin = resolve('node_modules', '.bin');
const pinned = existsSync(join(bin, 'node'));
// Child processes that run `node` get the same runtime (npm scripts do this too).
const env = pinned ? { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` } : process.env;
const args = ['--test', '--test-reporter=spec', ...files];
const r = spawnSync(pinned ? join(bin, 'node') : process.execPath, args, { stdio: 'inherit', env });
process.exit(r.status ?? 1);
