// `deltad redirect`: points systemd-sysupdate's url-file transfers at the daemon
// with a drop-in in /run/sysupdate.d/<transfer>.transfer.d/50-deltad.conf, and
// `--remove` takes it away again. deltad.socket runs both (ExecStartPost /
// ExecStopPre), so transfers go through deltad exactly while its socket is up.
import type { Command } from '../command.js';
import { UsageError } from '../../lib/errors.js';
import { flag, list, str } from '../cli-args.js';
import { configOptions, configUsage, loadConfig } from '../config.js';
import { readTransfers, redirectedPath, redirectedTransfers, removeDropin, transfersImage, writeDropin } from '../sysupdate-transfers.js';

export const command: Command = {
  name: 'redirect',
  usage: `Usage: deltad redirect [--transfer NAME]... [--remove] [--root DIR] [config options]

Writes /run/sysupdate.d/<NAME>.transfer.d/50-deltad.conf overriding [Source] Path=
so that the transfer downloads from the daemon (http://<listen>/...) instead of
the origin. The transfer's Path= must start with the configured origin; the rest
(specifiers such as %w, %W, %a included) is kept. Without --transfer, every
url-file transfer whose MatchPattern= is an image (see --image-pattern) is chosen.

Options:
  --transfer NAME   transfer file name without ".transfer" (repeatable)
  --remove          remove the drop-in(s) instead (all of deltad's without --transfer)
  --root DIR        file-system root to work under (default /; for tests and images)

${configUsage}`,
  options: {
    ...configOptions,
    transfer: { type: 'string', multiple: true },
    remove: { type: 'boolean' },
    root: { type: 'string' },
  },
  async run(ctx) {
    const root = str(ctx, 'root') ?? '/';
    const names = list(ctx, 'transfer');
    if (flag(ctx, 'remove')) {
      const targets = names.length ? names : await redirectedTransfers(root);
      for (const name of targets) {
        const removed = await removeDropin(root, name);
        if (removed) ctx.stdout.write(`removed ${removed}\n`);
      }
      return 0;
    }
    const config = loadConfig({ values: ctx.values });
    const all = await readTransfers(root);
    let chosen;
    if (names.length) {
      chosen = names.map((n) => {
        const t = all.find((x) => x.name === n);
        if (!t) throw new UsageError(`no transfer "${n}" in ${root}{etc,run,usr/local/lib,usr/lib}/sysupdate.d (known: ${all.map((x) => x.name).join(', ') || 'none'})`);
        return t;
      });
    } else {
      chosen = all.filter((t) => t.sourceType === 'url-file' && transfersImage(t, config.imagePatterns));
      if (chosen.length === 0) throw new UsageError(`no url-file transfer for an image (${config.imagePatterns.join(' ')}) found; name one with --transfer`);
    }
    // Check every transfer before writing anything, so a bad one changes nothing.
    const planned = chosen.map((t) => ({ t, path: redirectedPath(t, config.origin, config.listen) }));
    for (const { t, path } of planned) {
      const file = await writeDropin(root, t.name, path);
      ctx.stdout.write(`${t.name}: Path=${path} (${file})\n`);
    }
    return 0;
  },
};
