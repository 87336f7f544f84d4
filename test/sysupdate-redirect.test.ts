// `deltad redirect` for every systemd from 252 on, against temporary roots:
// 252-256 layouts (*.conf, whole files) get a marked complete copy in
// run/sysupdate.d, 257+ (*.transfer) the drop-in; --remove deletes exactly
// what deltad wrote; nothing to redirect is a warning and exit 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { command as redirect } from '../daemon/commands/redirect.js';
import { COPY_MARKER, readTransfers } from '../daemon/sysupdate-transfers.js';
import { parseSystemdVersion } from '../daemon/systemd-version.js';
import { UsageError } from '../lib/errors.js';
import { REPO_ROOT } from './helpers/repo.js';
import { tmpDir } from './helpers/tmp.js';

const CLI = join(REPO_ROOT, 'dist/daemon/cli.js');

const KDE_CONF = `# Vendor transfer (systemd 252-256 style)
[Transfer]
ProtectVersion=%A
Verify=no

[Source]
Type=url-file
Path=https://files.kde.org/kde-linux
MatchPattern=kde-linux_@v_root-x86-64.erofs

[Target]
Type=regular-file
Path=/system
MatchPattern=kde-linux_@v.erofs
InstancesMax=3
`;

async function makeRoot(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const root = await tmpDir(t, 'redirect');
  await mkdir(join(root, 'usr/lib/sysupdate.d'), { recursive: true });
  return root;
}

/** Runs the command in-process (exit 2 = UsageError), with stdout and stderr kept apart. */
async function run(root: string, origin: string, ...args: string[]) {
  const conf = join(root, 'deltad.conf');
  await writeFile(conf, `origin = ${origin}\nlisten = 127.0.0.1:3129\n`);
  const out: string[] = [];
  const err: string[] = [];
  const argv = ['--root', root, '--config', conf, ...args];
  const parsed = parseArgs({ args: argv, options: redirect.options, allowPositionals: true });
  const stream = (into: string[]) => ({ write: (s: string) => into.push(s) }) as unknown as NodeJS.WritableStream;
  const values = parsed.values as Record<string, string | boolean | string[] | undefined>;
  try {
    const io = { stdout: stream(out), stderr: stream(err) };
    const status = await redirect.run({ values, positionals: [], interactive: false, ...io });
    return { status, stdout: out.join(''), stderr: err.join('') };
  } catch (e) {
    return { status: e instanceof UsageError ? 2 : 1, stdout: out.join(''), stderr: (e as Error).message };
  }
}

test('systemd 252-256: a marked whole copy in run/sysupdate.d, only Path= changed; twice; --remove', async (t) => {
  const root = await makeRoot(t);
  const vendor = join(root, 'usr/lib/sysupdate.d/50-root-x86-64-erofs.conf');
  await writeFile(vendor, KDE_CONF);
  // The same Path= as the origin, with no trailing slash: accepted.
  for (const version of ['252', undefined]) {
    const r = await run(root, 'https://files.kde.org/kde-linux', ...(version ? ['--systemd-version', version] : []));
    assert.equal(r.status, 0, r.stderr);
    const copy = join(root, 'run/sysupdate.d/50-root-x86-64-erofs.conf');
    const text = await readFile(copy, 'utf8');
    assert.ok(text.startsWith(COPY_MARKER), "marked as deltad's");
    const body = text.split('\n').slice(2).join('\n');
    const expected = KDE_CONF.replace('Path=https://files.kde.org/kde-linux', 'Path=http://127.0.0.1:3129/');
    assert.equal(body, expected, 'the rest byte for byte');
    await assert.rejects(stat(join(root, 'run/sysupdate.d/50-root-x86-64-erofs.conf.d')), 'no drop-in directory');
    // deltad's copy is never read as the transfer: the vendor file stays the effective one.
    const [transfer] = await readTransfers(root);
    assert.equal(transfer.file, vendor);
    assert.equal(transfer.sourcePath, 'https://files.kde.org/kde-linux');
    assert.deepEqual(transfer.targetPatterns, ['kde-linux_@v.erofs']);
  }
  // An administrator's file in run/sysupdate.d is neither replaced nor removed.
  const admin = join(root, 'run/sysupdate.d/70-admin.conf');
  await writeFile(admin, KDE_CONF.replace('kde-linux_@v_root', 'other_@v_root'));
  const adminRun = await run(root, 'https://files.kde.org/kde-linux/', '--transfer', '70-admin');
  assert.equal(adminRun.status, 2);
  assert.match(adminRun.stderr, /70-admin\.conf is an administrator's file/);

  const cli = [CLI, 'redirect', '--root', root, '--remove'];
  const removed = spawnSync(process.execPath, cli, { encoding: 'utf8', timeout: 10_000 });
  assert.equal(removed.status, 0, removed.stderr);
  assert.match(removed.stdout, /removed .*50-root-x86-64-erofs\.conf/);
  assert.deepEqual(await readdir(join(root, 'run/sysupdate.d')), ['70-admin.conf'], "only deltad's copy was removed");
  assert.equal(await readFile(vendor, 'utf8'), KDE_CONF, 'the vendor file is untouched');
});

test('systemd 257+: *.transfer gets the drop-in; on 252 a *.transfer is skipped, warning, exit 0', async (t) => {
  const root = await makeRoot(t);
  await writeFile(join(root, 'usr/lib/sysupdate.d/50-root.transfer'), KDE_CONF);
  const r = await run(root, 'https://files.kde.org/', '--systemd-version', '257');
  assert.equal(r.status, 0, r.stderr);
  const dropin = join(root, 'run/sysupdate.d/50-root.transfer.d/50-deltad.conf');
  assert.match(await readFile(dropin, 'utf8'), /^\[Source\]\nPath=http:\/\/127\.0\.0\.1:3129\/kde-linux$/m);
  await assert.rejects(stat(join(root, 'run/sysupdate.d/50-root.conf')), 'no copy where drop-ins work');

  await rm(join(root, 'run'), { recursive: true });
  const old = await run(root, 'https://files.kde.org/', '--systemd-version', '252');
  assert.equal(old.status, 0, 'never fails the socket unit');
  assert.match(old.stderr, /systemd 252 reads only \*\.conf transfer files/);
  assert.match(old.stderr, /no url-file transfer for an image .* that deltad can redirect/);
  await assert.rejects(stat(join(root, 'run/sysupdate.d')), 'nothing written');
});

test('nothing to redirect: exit 0, a warning; an admin file in /etc is kept; config errors exit 2', async (t) => {
  const root = await makeRoot(t);
  const none = await run(root, 'https://files.kde.org/kde-linux');
  assert.equal(none.status, 0);
  assert.match(none.stderr, /warning: no url-file transfer for an image/);

  await mkdir(join(root, 'etc/sysupdate.d'), { recursive: true });
  await writeFile(join(root, 'etc/sysupdate.d/50-root.conf'), KDE_CONF);
  const etc = await run(root, 'https://files.kde.org/kde-linux');
  assert.equal(etc.status, 0);
  assert.match(etc.stderr, /etc\/sysupdate\.d\/50-root\.conf is an administrator's file/);
  assert.match(etc.stderr, /a copy in \/run\/sysupdate\.d cannot override/);
  await assert.rejects(stat(join(root, 'run/sysupdate.d')));

  await rm(join(root, 'etc'), { recursive: true });
  await writeFile(join(root, 'usr/lib/sysupdate.d/50-root.conf'), KDE_CONF);
  const mismatch = await run(root, 'https://files.kde.org/kde-linux-other');
  assert.equal(mismatch.status, 2);
  assert.match(mismatch.stderr, /is not under the configured origin https:\/\/files\.kde\.org\/kde-linux-other\//);
  await assert.rejects(stat(join(root, 'run/sysupdate.d')), 'a refused transfer writes nothing');
});

test('systemd version strings', () => {
  assert.equal(parseSystemdVersion('systemd 252 (252.39-1~deb12u2)\n+PAM +AUDIT'), 252);
  assert.equal(parseSystemdVersion('systemd 257 (257.4-1-arch)\n'), 257);
  assert.equal(parseSystemdVersion('something else'), undefined);
});

test('deltad.socket never fails because of a redirect: ExecStartPost=- and ExecStopPre=-', async () => {
  const unit = await readFile(join(REPO_ROOT, 'systemd/deltad.socket'), 'utf8');
  assert.match(unit, /^ExecStartPost=-\S+ redirect$/m);
  assert.match(unit, /^ExecStopPre=-\S+ redirect --remove$/m);
});
