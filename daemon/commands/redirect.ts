// `deltad redirect`: points systemd-sysupdate's url-file transfers at the
// daemon, and `--remove` takes that away again. deltad.socket runs both
// (ExecStartPost=- / ExecStopPre=-), so transfers go through deltad exactly
// while its socket is up, and a redirect that cannot be done never fails the
// socket: sysupdate then simply keeps downloading from the origin.
// Exit status: 0 when every chosen transfer is redirected, or when there is
// nothing deltad can redirect (a warning says why); 2 for a configuration
// error (no origin, Path= not under it, a named transfer that cannot be
// redirected), and then nothing is written.
import type { Command } from '../command.js';
import { UsageError } from '../../lib/errors.js';
import { flag, list, parseCount, str } from '../cli-args.js';
import { configOptions, configUsage, loadConfig } from '../config.js';
import {
  readTransfers,
  redirectedPath,
  redirectedTransfers,
  redirectKind,
  removeRedirect,
  transfersImage,
  writeCopy,
  writeDropin,
  type Transfer,
} from '../sysupdate-transfers.js';
import { detectSystemdVersion } from '../systemd-version.js';

export const command: Command = {
  name: 'redirect',
  usage: `Usage: deltad redirect [--transfer NAME]... [--remove] [--root DIR] [--systemd-version N] [config options]

Overrides [Source] Path= of sysupdate transfers so that they download from the
daemon (http://<listen>/...) instead of the origin. The transfer's Path= must
start with the configured origin; the rest (specifiers such as %w, %W, %a
included) is kept. Without --transfer, every url-file transfer whose
MatchPattern= is an image (see --image-pattern) is chosen.

systemd 257 and later (*.transfer files): writes the drop-in
  /run/sysupdate.d/<NAME>.transfer.d/50-deltad.conf
systemd 252-256 (*.conf files, no drop-ins): writes a complete copy
  /run/sysupdate.d/<NAME>.conf (masks /usr/lib/sysupdate.d/<NAME>.conf)
with only Path= changed, marked as deltad's on its first line.

Options:
  --transfer NAME      transfer file name without ".transfer"/".conf" (repeatable)
  --remove             remove what deltad wrote (all of it without --transfer); never an admin's file
  --root DIR           file-system root to work under (default /; for tests and images)
  --systemd-version N  the host's systemd (default: asked of systemd-sysupdate/systemctl
                       under /, else the transfer files' suffix decides)

${configUsage}`,
  options: {
    ...configOptions,
    transfer: { type: 'string', multiple: true },
    remove: { type: 'boolean' },
    root: { type: 'string' },
    'systemd-version': { type: 'string' },
  },
  async run(ctx) {
    const root = str(ctx, 'root') ?? '/';
    const names = list(ctx, 'transfer');
    const warn = (m: string) => ctx.stderr.write(`deltad redirect: warning: ${m}\n`);
    if (flag(ctx, 'remove')) {
      const targets = names.length ? names : await redirectedTransfers(root);
      for (const name of targets) {
        for (const removed of await removeRedirect(root, name)) ctx.stdout.write(`removed ${removed}\n`);
      }
      return 0;
    }
    const config = loadConfig({ values: ctx.values });
    const given = str(ctx, 'systemd-version');
    const version =
      given !== undefined ? parseCount(given, '--systemd-version', 0, 1, 100_000) : await detectSystemdVersion(root);
    const all = await readTransfers(root);
    let chosen: Transfer[];
    if (names.length) {
      chosen = names.map((n) => {
        const t = all.find((x) => x.name === n);
        if (!t) {
          const known = all.map((x) => x.name).join(', ') || 'none';
          const dirs = `${root}{etc,run,usr/local/lib,usr/lib}/sysupdate.d`;
          throw new UsageError(`no transfer "${n}" in ${dirs} (known: ${known})`);
        }
        return t;
      });
    } else {
      chosen = all.filter((t) => t.sourceType === 'url-file' && transfersImage(t, config.imagePatterns));
    }
    // Check every transfer before writing anything, so a bad one changes nothing.
    const planned: { t: Transfer; path: string; kind: 'dropin' | 'copy' }[] = [];
    for (const t of chosen) {
      const kind = redirectKind(t, version);
      if (typeof kind === 'object') {
        if (names.length) throw new UsageError(kind.skip);
        warn(`${kind.skip}; ${t.name} keeps downloading from the origin`);
        continue;
      }
      planned.push({ t, path: redirectedPath(t, config.origin, config.listen), kind });
    }
    if (planned.length === 0) {
      const what = `url-file transfer for an image (${config.imagePatterns.join(' ')})`;
      warn(
        `no ${what} that deltad can redirect under ${root}; sysupdate downloads from the origin` +
          ' (name one with --transfer)',
      );
      return 0;
    }
    for (const { t, path, kind } of planned) {
      const file = kind === 'dropin' ? await writeDropin(root, t.name, path) : await writeCopy(root, t, path);
      ctx.stdout.write(`${t.name}: Path=${path} (${file})\n`);
    }
    return 0;
  },
};
