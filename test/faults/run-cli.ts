// The fault suite's way to run the CLI (test/helpers/cli.ts): the test's
// environment plus `env`, and stdout as text.
import { type CliOptions, type CliRun, runCli } from '../helpers/cli.js';

export { CLI } from '../helpers/cli.js';

export async function deltad(
  args: string[],
  opts: Omit<CliOptions, 'env'> & { env?: Record<string, string> } = {},
): Promise<Omit<CliRun, 'stdout'> & { stdout: string }> {
  const r = await runCli(args, { ...opts, env: { ...process.env, ...opts.env } });
  return { ...r, stdout: r.stdout.toString() };
}
