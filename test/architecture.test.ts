// The shape of the house: lib/ is grouped by pipeline stage, and imports only run
// downward (a stage may import its own folder and the stages below it, never one
// above), lib/ never imports the daemon, and no module imports itself in a circle.
// Reads the import lines of the sources, so a wrong import fails here, not in review.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** lib/ folders from the bottom up; lib/errors.ts sits below them all, lib/index.ts above. */
export const STAGES = [
  'util',
  'format',
  'chunking',
  'fetch',
  'store',
  'seed',
  'tools',
  'plan',
  'assemble',
  'blockpack',
  'fleet',
  'delta',
] as const;

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/**
 * Relative import targets of a file, as repo-relative .ts paths: imports, re-exports, dynamic imports and, unless
 * `imports only`, worker scripts started with new URL() (a worker is a module the file depends on, not one it loads).
 */
function importsOf(file: string, importsOnly = false): string[] {
  const text = readFileSync(file, 'utf8');
  const re = importsOnly
    ? /(?:from\s+|import\s*\(\s*|import\s+)'(\.{1,2}\/[^']+)'/g
    : /(?:from\s+|import\s*\(\s*|import\s+|new URL\(\s*)'(\.{1,2}\/[^']+)'/g;
  const out: string[] = [];
  for (const m of text.matchAll(re)) {
    out.push(relative(root, resolve(dirname(file), m[1].replace(/\.js$/, '.ts'))));
  }
  return out;
}

/** Rank of a lib/ file: -1 for lib/errors.ts, the stage's position, or STAGES.length for lib/index.ts. */
function rank(path: string): number {
  const parts = path.split('/');
  if (parts[0] !== 'lib') return Number.NaN;
  if (parts.length === 2) return parts[1] === 'errors.ts' ? -1 : STAGES.length;
  const i = (STAGES as readonly string[]).indexOf(parts[1]);
  return i < 0 ? Number.NaN : i;
}

const libFiles = sources(join(root, 'lib')).map((f) => relative(root, f));

test('every lib/ module lives in a known stage folder, one level deep', () => {
  for (const f of libFiles) {
    assert.ok(!Number.isNaN(rank(f)), `${f}: not in a stage folder (${STAGES.join(', ')})`);
    assert.ok(f.split('/').length <= 3, `${f}: more than one level of folders`);
  }
});

test('lib/ imports run downward only and never reach the daemon, tests or benchmarks', () => {
  const wrong: string[] = [];
  for (const f of libFiles) {
    for (const target of importsOf(join(root, f))) {
      if (!target.startsWith('lib/')) wrong.push(`${f} imports ${target} (outside lib/)`);
      else if (rank(target) > rank(f)) wrong.push(`${f} imports ${target} (a stage above it)`);
    }
  }
  assert.deepEqual(wrong, []);
});

test('no import circles in lib/ or daemon/', () => {
  const files = [...libFiles, ...sources(join(root, 'daemon')).map((f) => relative(root, f))];
  const edges = new Map(files.map((f) => [f, importsOf(join(root, f), true).filter((t) => files.includes(t))]));
  const state = new Map<string, 'open' | 'done'>();
  const circles: string[] = [];
  const visit = (f: string, path: string[]): void => {
    if (state.get(f) === 'done') return;
    if (state.get(f) === 'open') {
      circles.push([...path.slice(path.indexOf(f)), f].join(' -> '));
      return;
    }
    state.set(f, 'open');
    for (const t of edges.get(f) ?? []) visit(t, [...path, f]);
    state.set(f, 'done');
  };
  for (const f of files) visit(f, []);
  assert.deepEqual(circles, []);
});

test('the daemon reaches lib/ only through modules that exist', () => {
  for (const f of sources(join(root, 'daemon'))) {
    for (const target of importsOf(f)) {
      assert.ok(
        statSync(join(root, target), { throwIfNoEntry: false }),
        `${relative(root, f)} imports missing ${target}`,
      );
    }
  }
});
