#!/usr/bin/env node
// `deltad` entry point: dispatches to daemon/commands/*, prints one clear line
// per error, and maps errors to exit codes (2 usage, 1 failure).
import { parseArgs } from 'node:util';
import { commands } from './commands/index.js';
import { DeltadError, UsageError } from '../lib/errors.js';
import { VERSION } from '../lib/util/version.js';
import type { Command } from './command.js';

function mainHelp(): string {
  const w = Math.max(...commands.map((c) => c.name.length));
  return [
    'deltad: delta downloads for image-based Linux systems (casync-compatible)',
    '',
    'Usage: deltad <command> [options] [arguments]',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    "Run 'deltad <command> --help' for a command's options.",
  ].join('\n');
}

/** The oldest Node whose node:zlib has zstd (with dictionaries); the project pins Node 24 LTS. */
const MIN_NODE = [22, 15];

/** Why this Node cannot run deltad's commands, or undefined (checked before any command module loads). */
function runtimeTooOld(): string | undefined {
  const [major, minor] = process.versions.node.split('.').map(Number);
  if (major > MIN_NODE[0] || (major === MIN_NODE[0] && minor >= MIN_NODE[1])) return undefined;
  return (
    `this is Node ${process.versions.node}, deltad needs Node 24 (>= ${MIN_NODE.join('.')}, for zstd in node:zlib). ` +
    "In a checkout run it as 'npm run deltad -- COMMAND' (the runtime npm ci installed); on a system, install a " +
    'release artifact (README), which brings its runtime'
  );
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    const entry = name === 'help' ? commands.find((c) => c.name === rest[0]) : undefined;
    process.stdout.write((entry ? (await entry.load()).usage : mainHelp()) + '\n');
    return 0;
  }
  if (name === '--version' || name === '-V') {
    process.stdout.write(`deltad ${VERSION}\n`);
    return 0;
  }
  const entry = commands.find((c) => c.name === name);
  const tooOld = runtimeTooOld();
  if (tooOld) {
    process.stderr.write(`deltad: ${tooOld}\n`);
    return 1;
  }
  if (!entry) {
    process.stderr.write(`deltad: unknown command "${name}"\n\n${mainHelp()}\n`);
    return 2;
  }
  const cmd: Command = await entry.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(cmd.usage + '\n');
    return 0;
  }
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: rest, options: cmd.options, allowPositionals: true, strict: true });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    return await cmd.run({
      values: parsed.values as Record<string, string | boolean | string[] | undefined>,
      positionals: parsed.positionals,
      // DELTAD_PROGRESS=1 draws progress bars even when stderr is not a terminal (0: never).
      interactive: process.env.DELTAD_PROGRESS
        ? process.env.DELTAD_PROGRESS === '1'
        : Boolean(process.stderr.isTTY) && !process.env.CI,
      stdout: process.stdout,
      stderr: process.stderr,
    });
  } catch (err) {
    return reportError(cmd.name, err);
  }
}

export function reportError(cmdName: string, err: unknown): number {
  if (err instanceof UsageError) {
    process.stderr.write(`deltad ${cmdName}: ${err.message}\nRun 'deltad ${cmdName} --help' for usage.\n`);
    return 2;
  }
  const e = err as NodeJS.ErrnoException;
  if (err instanceof DeltadError) {
    process.stderr.write(`deltad ${cmdName}: ${err.message}\n`);
  } else if (e?.code && e.path) {
    // fs errors: "ENOENT: no such file or directory, open 'x'" → clearer wording
    process.stderr.write(
      `deltad ${cmdName}: ${e.path}: ${e.code === 'ENOENT' ? 'no such file or directory' : e.message}\n`,
    );
  } else {
    process.stderr.write(`deltad ${cmdName}: ${e?.message ?? String(err)}\n`);
    if (process.env.DELTAD_DEBUG) process.stderr.write(`${e?.stack}\n`);
  }
  return 1;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`deltad: ${err?.stack ?? err}\n`);
    process.exitCode = 1;
  },
);
