// Runs every compiled test file (dist/test/**/*.test.js) with node's test runner,
// on the Node runtime package.json pins (node_modules/.bin/node) when installed,
// whichever node started this script.
// Optional filter: DELTAD_TEST=substring (or arguments) selects test files by name.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
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
const pinned = join('node_modules', '.bin', 'node');
const r = spawnSync(existsSync(pinned) ? pinned : process.execPath, ['--test', '--test-reporter=spec', ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
