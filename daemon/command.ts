// The shape of one `deltad <command>`: each lives in daemon/commands/<name>.ts
// and is listed in daemon/commands/index.ts. Options use node:util parseArgs.
import type { ParseArgsConfig } from 'node:util';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface CommandContext {
  /** Parsed option values (string | boolean | string[] per spec). */
  values: Record<string, string | boolean | string[] | undefined>;
  /** Positional arguments after the command name. */
  positionals: string[];
  /** True when stderr is a terminal: show progress bars. */
  interactive: boolean;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

export interface Command {
  name: string;
  /** Usage text for `deltad <name> --help` (synopsis, options, examples). */
  usage: string;
  options: OptionSpec;
  /** Returns the process exit code. Throw UsageError for bad arguments (exit 2). */
  run(ctx: CommandContext): Promise<number>;
}
