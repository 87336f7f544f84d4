// lib/util/runs.ts: unit numbers to runs and back, as range planning takes them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addToRuns, runsOf, unitsOf } from '../lib/util/runs.js';
import { packRuns } from '../lib/blockpack/plan.js';

test('runsOf joins consecutive units only; unitsOf gives them back', () => {
  const units = [0, 1, 2, 5, 7, 8, 10];
  const runs = runsOf(units);
  assert.deepEqual(runs, [
    { first: 0, count: 3 },
    { first: 5, count: 1 },
    { first: 7, count: 2 },
    { first: 10, count: 1 },
  ]);
  assert.deepEqual(unitsOf(runs), units);
  assert.deepEqual(runsOf([]), []);
  addToRuns(runs, 11);
  addToRuns(runs, 13);
  assert.deepEqual(runs.slice(-2), [
    { first: 10, count: 2 },
    { first: 13, count: 1 },
  ]);
  // A pack's units: the header (0), then frame f as unit f + 1.
  assert.deepEqual(packRuns([0, 1, 4]), [
    { first: 0, count: 3 },
    { first: 5, count: 1 },
  ]);
  assert.deepEqual(packRuns([3]), [
    { first: 0, count: 1 },
    { first: 4, count: 1 },
  ]);
});
