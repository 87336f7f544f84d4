// The real systemd-sysupdate (Debian's 252 and 257, built by scripts/build-sysupdate.sh)
// updating a scratch root through `deltad serve`, with nginx as the origin and a
// signed SHA256SUMS. For each systemd version and each layout (a plain one and
// KDE Linux's two-transfer layout): list, check-new, update to v2 and v3,
// byte-identical images, origin bytes far below the image size, no seed chunked
// twice, /v1/updatesize against what was really fetched. Also `deltad redirect`
// (and --remove) as sysupdate sees it, a corrupt seed chunk, and idle exits
// under socket activation. Run by scripts/e2e-sysupdate.sh, not by `npm test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
// The library's public entry point, so that moves inside lib/ do not touch this suite.
import { IndexCache, parseIndex, type ChunkIndex } from '../lib/index.js';
import {
  CLI,
  bytesFor,
  deltad,
  isRoot,
  makeErofs,
  makeSigningKey,
  nextTree,
  requireE2E,
  snapshot,
  startDeltad,
  startOriginServer,
  sysupdate,
  systemdBuild,
  treeV1,
  waitFor,
  writeSignedSums,
  daemonEnv,
  type DeltadProcess,
  type OriginServer,
  type SigningKey,
  type Systemd,
} from './env.js';

const VERSIONS = [252, 257] as const;
const FILES_PER_IMAGE = 24; // about 19 MB per image

// --- layouts -------------------------------------------------------------------

interface TransferFile {
  name: string;
  /** An image transfer (the ones `deltad redirect` picks); the .caibx transfer passes through as it is. */
  image: boolean;
  text(base: string): string;
}

interface Layout {
  name: string;
  /** Directory on the origin (Path= with specifiers resolved). */
  originDir: string;
  /** Path= after the base URL, as the transfer file has it. */
  pathPart: string;
  image(v: number): string;
  index(v: number): string;
  installed(v: number): string;
  /** The index sysupdate installs beside the image, when the layout has one. */
  installedIndex?(v: number): string;
  /** Whether the index is listed in SHA256SUMS (only when a transfer installs it). */
  indexListed: boolean;
  transfers: TransferFile[];
}

const transfer = (src: string, target: string, extra: string) => (base: string) =>
  `[Transfer]
ProtectVersion=%A

[Source]
Type=url-file
Path=${base}
MatchPattern=${src}

[Target]
Type=regular-file
Path=/system
MatchPattern=${target}
${extra}`;

const PLAIN: Layout = {
  name: 'plain',
  originDir: 'plain',
  pathPart: 'plain/',
  image: (v) => `os_${v}.raw`,
  // {name}.caibx: the index name deltad has always looked for. It stays out of SHA256SUMS: sysupdate's
  // MatchPattern=os_@v.raw also matches "os_2.raw.caibx" (252 and 257 ignore what follows the last
  // literal), and the last match wins, so a listed os_2.raw.caibx would be installed as os_2.raw.
  index: (v) => `os_${v}.raw.caibx`,
  indexListed: false,
  installed: (v) => `os_${v}.raw`,
  transfers: [{ name: '50-os', image: true, text: transfer('os_@v.raw', 'os_@v.raw', 'InstancesMax=3\n') }],
};

// KDE Linux: the erofs root image and its .caibx ({stem}.caibx) as two transfers.
const KDE: Layout = {
  name: 'KDE Linux',
  originDir: 'kde-linux/desktop/sysupdate/v2',
  pathPart: 'kde-linux/%W/sysupdate/v2/',
  image: (v) => `kde-linux_${v}_root-x86-64.erofs`,
  index: (v) => `kde-linux_${v}_root-x86-64.caibx`,
  installed: (v) => `kde-linux_${v}.erofs`,
  installedIndex: (v) => `kde-linux_${v}.erofs.caibx`,
  indexListed: true,
  transfers: [
    {
      name: 'kde-linux',
      image: true,
      text: transfer('kde-linux_@v_root-x86-64.erofs', 'kde-linux_@v.erofs', 'InstancesMax=4\n'),
    },
    {
      name: 'kde-linux-caibx',
      image: false,
      text: transfer('kde-linux_@v_root-x86-64.caibx', 'kde-linux_@v.erofs.caibx', 'InstancesMax=4\n'),
    },
  ],
};

// --- shared releases and key -------------------------------------------------------

interface Release {
  image: Buffer;
  index: Buffer;
  parsed: ChunkIndex;
}

let shared: Promise<{ dir: string; key: SigningKey; releases: Release[] }> | undefined;
function releasesAndKey() {
  shared ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'deltad-e2e-'));
    await chmod(dir, 0o755); // nginx's workers (not root) read the origin files below it
    const key = await makeSigningKey(dir);
    const releases: Release[] = [];
    let tree = treeV1(FILES_PER_IMAGE);
    for (let v = 1; v <= 3; v++) {
      if (v > 1) tree = nextTree(tree, v);
      const img = join(dir, `v${v}.erofs`);
      const image = await makeErofs(tree, dir, img);
      const r = await deltad(['make', `${img}.caibx`, img]);
      if (r.code !== 0) throw new Error(`deltad make failed: ${r.stderr}`);
      const index = await readFile(`${img}.caibx`);
      releases.push({ image, index, parsed: parseIndex(index) });
    }
    return { dir, key, releases };
  })();
  return shared;
}

test.after(async () => {
  if (!shared) return;
  const s = await shared;
  s.key.close();
  // DELTAD_E2E_KEEP=1 keeps the scratch machines (roots, origin, nginx and deltad logs) for a look.
  if (process.env.DELTAD_E2E_KEEP) console.log(`# kept ${s.dir}`);
  else await rm(s.dir, { recursive: true, force: true });
});

// How `deltad serve` learns the transfers it maps versions with (/v1/updatesize): the first option
// in its --help whose name has "root" or "definitions" and whose line mentions sysupdate or transfers.
// A root option gets the scratch root, a definitions option its usr/lib/sysupdate.d.
const serveHelp = (await deltad(['serve', '--help'])).stdout;
const TRANSFER_OPTION = /^\s+(--[a-z-]*(?:root|definitions)[a-z-]*)\b.*(?:sysupdate|transfer)/im.exec(serveHelp)?.[1];
function transferOption(root: string): string[] {
  if (!TRANSFER_OPTION) return [];
  return [TRANSFER_OPTION, TRANSFER_OPTION.includes('root') ? root : join(root, 'usr/lib/sysupdate.d')];
}

// --- one scratch machine -------------------------------------------------------------

interface Machine {
  dir: string;
  root: string;
  www: string;
  key: SigningKey;
  releases: Release[];
  origin: OriginServer;
  daemon: DeltadProcess;
  sd: Systemd;
  layout: Layout;
  publish(v: number): Promise<void>;
  /** sysupdate with definitions whose Path= points at the daemon (not depending on `deltad redirect`). */
  direct(args: string[]): ReturnType<typeof sysupdate>;
  /** sysupdate with the machine's own sysupdate.d (Path= at the origin, plus whatever is in run/). */
  own(args: string[]): ReturnType<typeof sysupdate>;
  close(): Promise<void>;
}

const DEFS = 'e2e-definitions';

async function machine(t: { after(fn: () => Promise<void>): void }, sd: Systemd, layout: Layout): Promise<Machine> {
  const { dir: top, key, releases } = await releasesAndKey();
  const dir = await mkdtemp(join(top, `m${sd.major}-`));
  await chmod(dir, 0o755);
  const root = join(dir, 'root');
  const www = join(dir, 'www');
  const pub = join(www, layout.originDir);
  for (const d of [join(root, 'system'), join(root, 'usr/lib/sysupdate.d'), join(root, DEFS), pub]) {
    await mkdir(d, { recursive: true });
  }
  await writeFile(join(root, 'usr/lib/os-release'), 'ID=e2e\nIMAGE_VERSION=1\nVARIANT_ID=desktop\n');
  const publish = async (v: number) => {
    await writeFile(join(pub, layout.image(v)), releases[v - 1].image);
    await writeFile(join(pub, layout.index(v)), releases[v - 1].index);
    await writeSignedSums(pub, key, (name) => layout.indexListed || !name.endsWith('.caibx'));
  };
  await publish(1);
  await publish(2);
  // Version 1 installed, as sysupdate would have left it.
  await writeFile(join(root, 'system', layout.installed(1)), releases[0].image);
  if (layout.installedIndex) await writeFile(join(root, 'system', layout.installedIndex(1)), releases[0].index);

  const origin = await startOriginServer(join(dir, 'nginx'), www);
  const daemon = await startDeltad([
    '--origin',
    `${origin.url}/`,
    '--cache-dir',
    join(dir, 'cache'),
    '--idle-timeout',
    '0',
    '--seed-glob',
    join(root, 'system/*.erofs'),
    '--seed-glob',
    join(root, 'system/*.raw'),
    ...transferOption(root),
  ]);
  // The machine's transfers point at the origin; the direct definitions at the daemon.
  for (const tr of layout.transfers) {
    const file = tr.name + sd.suffix;
    await writeFile(join(root, 'usr/lib/sysupdate.d', file), tr.text(`${origin.url}/${layout.pathPart}`));
    await writeFile(join(root, DEFS, file), tr.text(`${daemon.url}/${layout.pathPart}`));
  }
  const close = async () => {
    await daemon.stop();
    origin.stop();
  };
  t.after(close);
  return {
    dir,
    root,
    www,
    key,
    releases,
    origin,
    daemon,
    sd,
    layout,
    publish,
    close,
    direct: (args) => sysupdate(sd, key, root, args, { definitions: `/${DEFS}` }),
    own: (args) => sysupdate(sd, key, root, args),
  };
}

const tail = (s: string, n = 3000) => (s.length > n ? `…${s.slice(-n)}` : s);
const out = (r: { code: number | null; stdout: string; stderr: string }) =>
  `exit ${r.code}\n--- stdout\n${tail(r.stdout)}\n--- stderr\n${tail(r.stderr)}`;
const withLog = (msg: string, log: string) => `${msg}\n--- deltad log\n${tail(log)}`;

async function assertInstalled(m: Machine, v: number): Promise<void> {
  const got = await readFile(join(m.root, 'system', m.layout.installed(v)));
  assert.ok(got.equals(m.releases[v - 1].image), `${m.layout.installed(v)} is byte-identical to the published v${v}`);
  if (m.layout.installedIndex) {
    const idx = await readFile(join(m.root, 'system', m.layout.installedIndex(v)));
    assert.ok(idx.equals(m.releases[v - 1].index), `${m.layout.installedIndex(v)} is the published index`);
  }
}

/** Updates to `v` through the daemon; returns the origin bytes of the image during the update. */
async function updateTo(m: Machine, v: number, t: { diagnostic(msg: string): void }): Promise<number> {
  const before = (await m.origin.entries()).length;
  const completed = await m.daemon.metric('deltad_assemblies_completed_total');
  const started = Date.now();
  const r = await m.direct(['update']);
  assert.equal(r.code, 0, out(r));
  await assertInstalled(m, v);
  const entries = (await m.origin.entries()).slice(before);
  const imageBytes = bytesFor(entries, m.layout.image(v));
  const size = m.releases[v - 1].image.length;
  const pct = ((100 * imageBytes) / size).toFixed(1);
  const other = bytesFor(entries, 'SHA256SUMS', 'SHA256SUMS.gpg', m.layout.index(v));
  t.diagnostic(
    `v${v}: ${imageBytes} of ${size} image bytes from the origin (${pct}%), ` +
      `${other} bytes of manifest and index, update took ${Date.now() - started} ms`,
  );
  assert.ok(
    imageBytes > 0 && imageBytes < size * 0.4,
    withLog(`the origin served ${imageBytes} bytes of the ${size}-byte image (want well below)`, m.daemon.logs()),
  );
  const whole = entries.some((e) => e.uri.endsWith(`/${m.layout.image(v)}`) && e.range === '-' && e.bodyBytes === size);
  assert.ok(!whole, 'the whole image was never fetched');
  const assembled = await m.daemon.metric('deltad_assemblies_completed_total');
  assert.equal(assembled, completed + 1, 'one verified delta assembly');
  return imageBytes;
}

// --- list, check-new, update v2 and v3, updatesize ---------------------------------------

for (const major of VERSIONS) {
  for (const layout of [PLAIN, KDE]) {
    const name = `systemd ${major}, ${layout.name} layout: list, check-new, updatesize, update to v2, then v3`;
    test(name, { timeout: 300_000 }, async (t) => {
      const sd = systemdBuild(major);
      if (!requireE2E(t, isRoot, 'the e2e suite needs root (mount namespace for the test key)')) return;
      if (!requireE2E(t, Boolean(sd), `systemd ${major} is not built (scripts/build-sysupdate.sh)`)) return;
      const m = await machine(t, sd!, layout);

      await t.test('list: v1 installed and current, v2 available', async () => {
        const r = await m.direct(['list']);
        assert.equal(r.code, 0, out(r));
        assert.match(r.stdout, /^\S*\s*2\s.*candidate\s*$/m, out(r));
        assert.match(r.stdout, /^\S*\s*1\s.*current\s*$/m, out(r));
      });

      await t.test('check-new: v2', async () => {
        const r = await m.direct(['check-new']);
        assert.equal(r.code, 0, out(r));
        assert.equal(r.stdout.trim(), '2', out(r));
      });

      let predicted: number | undefined;
      await t.test('GET /v1/updatesize?version=2 answers a decimal byte count', async () => {
        const res = await fetch(`${m.daemon.url}/v1/updatesize?version=2`);
        const body = await res.text();
        const why = TRANSFER_OPTION ? ` (told ${TRANSFER_OPTION})` : ' (serve --help names no sysupdate root option)';
        assert.equal(res.status, 200, `status ${res.status}: ${body}${why}`);
        assert.match(body.trim(), /^\d+$/);
        predicted = Number(body.trim());
      });

      let fetched: number | undefined;
      await t.test('update: v2 installed byte-identical, origin bytes well below the image size', async (st) => {
        fetched = await updateTo(m, 2, st);
      });

      await t.test('updatesize for v2 matched the bytes fetched from the origin within 1%', () => {
        assert.ok(predicted !== undefined && fetched !== undefined, 'needs both the updatesize answer and the update');
        const msg = `updatesize said ${predicted}, the origin served ${fetched}`;
        assert.ok(Math.abs(predicted - fetched) <= fetched * 0.01, msg);
      });

      await t.test('second update to v3 chunks no seed again', async (st) => {
        await assertInstalled(m, 2);
        const key = { params: m.releases[2].parsed.params, digest: m.releases[2].parsed.digest };
        const cache = new IndexCache(join(m.dir, 'cache'));
        const seeds = [m.layout.installed(1), m.layout.installed(2)].map((n) => join(m.root, 'system', n));
        const hadIndex = await Promise.all(seeds.map(async (s) => (await cache.get(s, key)) !== null));
        const logBefore = m.daemon.logs().length;
        await m.publish(3);
        const c = await m.direct(['check-new']);
        assert.equal(c.stdout.trim(), '3', out(c));
        await updateTo(m, 3, st);
        const log = m.daemon.logs().slice(logBefore);
        for (const [i, s] of seeds.entries()) {
          if (hadIndex[i] || (await cache.get(s, key)) === null) continue;
          // A seed that gained an index during this update was chunked, unless deltad adopted the one it had assembled.
          const adopted = log.includes(`seed ${s}: adopted the index`);
          assert.ok(adopted, withLog(`seed ${basename(s)} was chunked during the v3 update`, log));
        }
        const installedV2 = seeds[1];
        assert.ok(
          log.includes(`seed ${installedV2}: adopted the index`) || Boolean(m.layout.installedIndex),
          withLog(`the installed v2 (${basename(installedV2)}) found its index ready`, log),
        );
      });
    });
  }
}

// --- the signature is really checked -------------------------------------------------------

for (const major of VERSIONS) {
  const name = `systemd ${major}: SHA256SUMS signed by another key is refused (the suite's keyring is the one in use)`;
  test(name, { timeout: 120_000 }, async (t) => {
    const sd = systemdBuild(major);
    if (!requireE2E(t, isRoot, 'the e2e suite needs root (mount namespace for the test key)')) return;
    if (!requireE2E(t, Boolean(sd), `systemd ${major} is not built (scripts/build-sysupdate.sh)`)) return;
    const m = await machine(t, sd!, PLAIN);
    const ok = await m.direct(['check-new']);
    assert.equal(ok.code, 0, out(ok));
    const other = await makeSigningKey(join(m.dir, 'other-key'));
    t.after(async () => other.close());
    other.sign(join(m.www, PLAIN.originDir, 'SHA256SUMS'));
    const bad = await m.direct(['check-new']);
    assert.notEqual(bad.code, 0, out(bad));
    assert.match(bad.stderr, /signature|gpg/i, out(bad));
  });
}

// --- deltad redirect / --remove ----------------------------------------------------------

for (const major of VERSIONS) {
  const name = `systemd ${major}: deltad redirect sends sysupdate through the daemon, --remove takes exactly that away`;
  test(name, { timeout: 300_000 }, async (t) => {
    const sd = systemdBuild(major);
    if (!requireE2E(t, isRoot, 'the e2e suite needs root (mount namespace for the test key)')) return;
    if (!requireE2E(t, Boolean(sd), `systemd ${major} is not built (scripts/build-sysupdate.sh)`)) return;
    const m = await machine(t, sd!, KDE);
    const notSystem = (rel: string) => rel === 'system' || rel === DEFS;
    const before = await snapshot(m.root, notSystem);
    const redirectedPath = `${m.daemon.url}/${KDE.pathPart}`;
    const images = KDE.transfers.filter((x) => x.image);

    const listen = `127.0.0.1:${m.daemon.port}`;
    const origin = `${m.origin.url}/`;
    const config = ['--config', '/dev/null', '--root', m.root];
    const r = await deltad(['redirect', ...config, '--origin', origin, '--listen', listen]);
    assert.equal(r.code, 0, out(r));
    const after = await snapshot(m.root, notSystem);
    const written = [...after.keys()].filter((k) => !before.has(k)).sort();
    assert.deepEqual(
      [...before.keys()].filter((k) => after.get(k) !== before.get(k)),
      [],
      'no existing file changed',
    );
    if (major === 252) {
      // No drop-ins before 257: a full copy in /run/sysupdate.d, identical but for [Source] Path=.
      assert.deepEqual(written, images.map((x) => `run/sysupdate.d/${x.name}.conf`).sort());
      for (const x of images) {
        const meaningful = (s: string) =>
          s
            .split('\n')
            .map((l) => l.trim())
            .filter((l) => l && !l.startsWith('#') && !l.startsWith(';'));
        const orig = meaningful(await readFile(join(m.root, 'usr/lib/sysupdate.d', `${x.name}.conf`), 'utf8'));
        const copy = meaningful(await readFile(join(m.root, 'run/sysupdate.d', `${x.name}.conf`), 'utf8'));
        const expected = orig.map((l) => (l.startsWith('Path=http') ? `Path=${redirectedPath}` : l));
        assert.deepEqual(copy, expected, `${x.name}.conf`);
      }
    } else {
      assert.deepEqual(written, images.map((x) => `run/sysupdate.d/${x.name}.transfer.d/50-deltad.conf`).sort());
      for (const x of images) {
        const text = await readFile(join(m.root, 'run/sysupdate.d', `${x.name}.transfer.d/50-deltad.conf`), 'utf8');
        assert.match(text, /^\[Source\]$/m);
        assert.ok(text.split('\n').includes(`Path=${redirectedPath}`), text);
      }
    }

    await t.test("sysupdate with the machine's own definitions now downloads through deltad", async () => {
      // Only that the transfers reach deltad; how small the download is, is the update tests' business.
      const logBefore = m.daemon.logs().length;
      const r = await m.own(['update']);
      assert.equal(r.code, 0, out(r));
      await assertInstalled(m, 2);
      const log = m.daemon.logs().slice(logBefore);
      for (const file of ['SHA256SUMS', 'SHA256SUMS.gpg', KDE.image(2)]) {
        assert.ok(log.includes(`GET /${KDE.originDir}/${file} `), withLog(`deltad served ${file}`, log));
      }
    });

    await t.test('--remove deletes exactly what was written; sysupdate goes straight to the origin again', async () => {
      const rr = await deltad(['redirect', '--remove', '--config', '/dev/null', '--root', m.root]);
      assert.equal(rr.code, 0, out(rr));
      const removed = await snapshot(m.root, notSystem);
      assert.deepEqual([...removed.keys()].sort(), [...before.keys()].sort(), 'the tree is as before the redirect');
      // /run/sysupdate.d/*.transfer.d/ directories deltad made are gone too, not left empty.
      const leftovers = (await snapshotDirs(m.root)).filter((d) => d.startsWith('run/sysupdate.d/'));
      assert.deepEqual(leftovers, [], 'no empty drop-in directories left');
      const requests = await m.daemon.metric('deltad_http_requests_total');
      const originBefore = (await m.origin.entries()).length;
      const c = await m.own(['check-new']);
      assert.equal(c.stdout.trim(), '', out(c)); // v2 installed, nothing newer
      const reached = await m.daemon.metric('deltad_http_requests_total');
      assert.equal(reached, requests + 1, 'only the metrics request reached deltad');
      const direct = (await m.origin.entries()).slice(originBefore);
      assert.ok(
        direct.some((e) => e.uri.endsWith('/SHA256SUMS')),
        'the origin served SHA256SUMS directly',
      );
    });
  });
}

async function snapshotDirs(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(r);
      await walk(r);
    }
  };
  await walk('');
  return out;
}

// --- a corrupt seed chunk -------------------------------------------------------------------

for (const major of VERSIONS) {
  for (const layout of [PLAIN, KDE]) {
    const claim = layout.installedIndex ? 'its index beside it still claims the good chunk' : 'no index beside it';
    const name = `systemd ${major}, ${layout.name} layout: a corrupt chunk in a complete seed (${claim}): right image`;
    test(name, { timeout: 300_000 }, async (t) => {
      const sd = systemdBuild(major);
      if (!requireE2E(t, isRoot, 'the e2e suite needs root (mount namespace for the test key)')) return;
      if (!requireE2E(t, Boolean(sd), `systemd ${major} is not built (scripts/build-sysupdate.sh)`)) return;
      const m = await machine(t, sd!, layout);
      // A chunk of v1 that v2 reuses, so the delta would take it from the seed.
      const [v1, v2] = [m.releases[0].parsed, m.releases[1].parsed];
      const v2Ids = new Set(Array.from({ length: v2.count }, (_, i) => v2.idHex(i)));
      const isZero = (i: number) => m.releases[0].image.subarray(v1.start(i), v1.end(i)).every((b) => b === 0);
      const reused = Array.from({ length: v1.count }, (_, i) => i).filter((i) => v2Ids.has(v1.idHex(i)) && !isZero(i));
      assert.ok(reused.length > 10, `v2 reuses ${reused.length} chunks of v1`);
      const victim = reused[reused.length >> 1];
      const seedPath = join(m.root, 'system', layout.installed(1));
      const seed = Buffer.from(m.releases[0].image);
      seed[v1.start(victim) + (v1.chunkSize(victim) >> 1)] ^= 0x5a;
      await writeFile(seedPath, seed);
      await updateTo(m, 2, t);
      assert.ok((await readFile(seedPath)).equals(seed), 'the seed is only read, never repaired or changed');
    });
  }
}

// --- idle exit under socket activation ---------------------------------------------------

// systemd's socket activation in miniature: hold the listening socket, start the daemon on
// fd 3 when a connection waits, start it again after it exits (as deltad.socket does).
const ACTIVATOR = `
import os, select, signal, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 0)); s.listen(128)
print('port', s.getsockname()[1], flush=True)
child = [0]
def stop(*_):
    if child[0]: os.kill(child[0], signal.SIGKILL)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    select.select([s], [], [])
    pid = os.fork()
    if pid == 0:
        os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
        os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES='http')
        os.execv(sys.argv[1], sys.argv[1:])
    child[0] = pid
    print('start', flush=True)
    os.waitpid(pid, 0)
    child[0] = 0
    print('exit', flush=True)
`;

const IDLE_TEST = '60 requests around the idle timeout under socket activation: none answered 503';
test(IDLE_TEST, { timeout: 240_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'deltad-e2e-idle-'));
  await chmod(dir, 0o755);
  const www = join(dir, 'www');
  await mkdir(www);
  await writeFile(join(www, 'SHA256SUMS'), `${'a'.repeat(64)}  x.raw\n`);
  const origin = await startOriginServer(join(dir, 'nginx'), www);
  // nginx is stopped through its config file, so before the directory goes.
  t.after(async () => {
    origin.stop();
    await rm(dir, { recursive: true, force: true });
  });
  const idleSeconds = 0.5;
  const serve = [
    CLI,
    'serve',
    '--config',
    '/dev/null',
    '--origin',
    `${origin.url}/`,
    '--cache-dir',
    join(dir, 'cache'),
    '--seed-glob',
    join(dir, 'none/*.raw'),
    '--idle-timeout',
    String(idleSeconds),
  ];
  const activator = spawn('python3', ['-c', ACTIVATOR, process.execPath, ...serve], {
    env: daemonEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  activator.stdout!.on('data', (d) => (stdout += d));
  activator.stderr!.on('data', (d) => (stderr += d));
  t.after(async () => {
    activator.kill('SIGTERM');
  });
  const port = await waitFor('the activator', () => Number(/^port (\d+)$/m.exec(stdout)?.[1]) || undefined);

  const get = () =>
    new Promise<number>((resolve, reject) => {
      // A new connection per request, as sysupdate's systemd-pull processes make them.
      const opts = { host: '127.0.0.1', port, path: '/SHA256SUMS', agent: false, timeout: 20_000 };
      const req = httpRequest(opts, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('timeout', () => req.destroy(new Error('no answer within 20 s')));
      req.on('error', reject);
      req.end();
    });
  const statuses: (number | string)[] = [];
  // Gaps from well before to well after the idle timeout, so requests also land while the daemon is exiting.
  const offsets = [-200, -100, -40, -15, -5, 0, 5, 15, 40, 100, 200, 350];
  for (let i = 0; i < 60; i++) {
    statuses.push(await get().catch((err: Error) => err.message));
    await new Promise((r) => setTimeout(r, idleSeconds * 1000 + offsets[i % offsets.length]));
  }
  const starts = stdout.split('\n').filter((l) => l === 'start').length;
  const tally: Record<string, number> = {};
  for (const st of statuses) tally[String(st)] = (tally[String(st)] ?? 0) + 1;
  t.diagnostic(`${starts} daemon starts; answers ${JSON.stringify(tally)}`);
  assert.ok(starts >= 5, `the daemon exited when idle and was started again (${starts} starts)\n${tail(stderr)}`);
  assert.ok(!statuses.includes(503), `answers: ${JSON.stringify(tally)}`);
  assert.deepEqual(tally, { 307: 60 }, 'every request passed through to the origin');
});

test('fixtures: three erofs releases, each sharing most of its chunks with the one before', async () => {
  const { releases } = await releasesAndKey();
  assert.equal(releases.length, 3);
  for (let v = 1; v < 3; v++) {
    const [a, b] = [releases[v - 1].parsed, releases[v].parsed];
    const ids = new Set(Array.from({ length: a.count }, (_, i) => a.idHex(i)));
    let same = 0;
    for (let i = 0; i < b.count; i++) if (ids.has(b.idHex(i))) same += b.chunkSize(i);
    assert.ok(same > b.size * 0.6 && same < b.size, `v${v + 1} shares ${same} of ${b.size} bytes with v${v}`);
  }
});
