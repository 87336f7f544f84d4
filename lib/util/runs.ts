// Runs of consecutive unit numbers (chunks of a target, frames of a pack), the
// shape range planning takes: numbers in, runs out, and back.

/** Units [first, first + count). */
export interface Run {
  first: number;
  count: number;
}

/** Appends unit `i` to `runs`, extending the last run when `i` follows it. */
export function addToRuns(runs: Run[], i: number): void {
  const last = runs[runs.length - 1];
  if (last && last.first + last.count === i) last.count++;
  else runs.push({ first: i, count: 1 });
}

/** The runs of `units` (ascending). */
export function runsOf(units: Iterable<number>): Run[] {
  const runs: Run[] = [];
  for (const i of units) addToRuns(runs, i);
  return runs;
}

/** Every unit of `runs`, in order. */
export function unitsOf(runs: readonly Run[]): number[] {
  return runs.flatMap((r) => Array.from({ length: r.count }, (_, k) => r.first + k));
}
