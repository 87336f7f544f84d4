// The environment of the real-systemd-sysupdate end-to-end suite: systemd 252
// and 257 built from Debian's sources (scripts/build-sysupdate.sh), a signing
// key and a signed SHA256SUMS, nginx on 127.0.0.1 as the origin, `deltad serve`
// as a real process, and generated erofs images. Nothing here leaves loopback
// or changes the host: sysupdate runs in a private mount namespace in which
// only /etc/systemd (where systemd-pull looks for import-pubring.gpg, whatever
// --root says) is replaced by a scratch copy holding the test key.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startNginx, type AccessEntry, type Nginx } from '../bench/nginx.js';
import { REPO_ROOT } from '../test/helpers/repo.js';
import { run, type RunResult } from '../test/helpers/sysupdate-client.js';

export const E2E_CACHE = process.env.DELTAD_E2E_CACHE ?? '/var/cache/deltad-e2e';
export const CLI = join(REPO_ROOT, 'dist/daemon/cli.js');
export const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

export interface Systemd {
  major: 252 | 257;
  sysupdate: string;
  pull: string;
  /** Transfer file suffix: 252 reads sysupdate.d/*.conf, 257 *.transfer. */
  suffix: '.conf' | '.transfer';
}

export function systemdBuild(major: 252 | 257): Systemd | undefined {
  const dir = join(E2E_CACHE, `systemd-${major}`, 'build');
  const sysupdate = join(dir, 'systemd-sysupdate');
  const pull = join(dir, 'systemd-pull');
  if (!existsSync(sysupdate) || !existsSync(pull)) return undefined;
  return { major, sysupdate, pull, suffix: major === 252 ? '.conf' : '.transfer' };
}

export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined> | T | undefined,
  ms = 15_000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function must(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: env ?? process.env });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr || r.error?.message}`);
  }
  return r.stdout;
}

// --- signing ---------------------------------------------------------------

export interface SigningKey {
  /** A scratch /etc/systemd: the host's files plus import-pubring.gpg with this key. */
  etcSystemd: string;
  sign(file: string): void;
  close(): void;
}

export async function makeSigningKey(dir: string): Promise<SigningKey> {
  const home = join(dir, 'gnupg');
  await mkdir(home, { recursive: true });
  await chmod(home, 0o700);
  const env = { ...process.env, GNUPGHOME: home };
  const uid = 'deltad e2e <e2e@127.0.0.1>';
  must('gpg', ['--batch', '--passphrase', '', '--quick-gen-key', uid, 'ed25519', 'sign', 'never'], env);
  const etcSystemd = join(dir, 'etc-systemd');
  await mkdir(etcSystemd, { recursive: true });
  if (existsSync('/etc/systemd')) must('cp', ['-a', '/etc/systemd/.', etcSystemd]);
  const pub = spawnSync('gpg', ['--batch', '--export'], { env });
  if (pub.status !== 0 || pub.stdout.length === 0) throw new Error(`gpg --export failed: ${pub.stderr}`);
  await writeFile(join(etcSystemd, 'import-pubring.gpg'), pub.stdout);
  return {
    etcSystemd,
    sign: (file) => must('gpg', ['--batch', '--yes', '--detach-sign', '-o', `${file}.gpg`, file], env),
    close: () => void spawnSync('gpgconf', ['--kill', 'gpg-agent'], { env }),
  };
}

// --- sysupdate --------------------------------------------------------------

export interface SysupdateRun {
  /** --definitions: a directory inside the root (257 resolves it under --root, 252 does not). */
  definitions?: string;
  timeoutMs?: number;
}

/** Runs systemd-sysupdate --root=ROOT in a private mount namespace that sees the test key. */
export function sysupdate(
  sd: Systemd,
  key: SigningKey,
  root: string,
  args: string[],
  opts: SysupdateRun = {},
): Promise<RunResult> {
  const d = opts.definitions;
  const defs = d === undefined ? [] : [`--definitions=${sd.major === 252 ? join(root, d) : d}`];
  const env: NodeJS.ProcessEnv = { ...process.env, SYSTEMD_PULL_PATH: sd.pull, SYSTEMD_COLORS: '0' };
  delete env.NOTIFY_SOCKET;
  const script = 'mount --bind "$0" /etc/systemd && exec "$@"';
  return run(
    'unshare',
    [
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      script,
      key.etcSystemd,
      sd.sysupdate,
      '--no-pager',
      `--root=${root}`,
      ...defs,
      ...args,
    ],
    opts.timeoutMs ?? 120_000,
    env,
  );
}

// --- origin -----------------------------------------------------------------

export interface OriginServer {
  url: string;
  root: string;
  nginx: Nginx;
  /** Access-log entries so far, once nginx has written every finished request. */
  entries(): Promise<AccessEntry[]>;
  stop(): void;
}

export async function startOriginServer(dir: string, root: string): Promise<OriginServer> {
  const port = await freePort();
  const nginx = startNginx(dir, [{ port, root }]);
  return {
    url: `http://127.0.0.1:${port}`,
    root,
    nginx,
    // nginx logs a request when it ends, which may be just after the client saw the last byte.
    async entries() {
      let last = -1;
      for (let i = 0; i < 40; i++) {
        const n = nginx.entries().length;
        if (n === last) break;
        last = n;
        await new Promise((r) => setTimeout(r, 50));
      }
      return nginx.entries();
    },
    stop: () => nginx.stop(),
  };
}

/** Body bytes the origin sent for requests whose URI ends with one of the names. */
export function bytesFor(entries: AccessEntry[], ...names: string[]): number {
  return entries.filter((e) => names.some((n) => e.uri.endsWith(`/${n}`))).reduce((s, e) => s + e.bodyBytes, 0);
}

// --- deltad serve -------------------------------------------------------------

export interface DeltadProcess {
  url: string;
  port: number;
  child: ChildProcess;
  logs(): string;
  metric(name: string): Promise<number>;
  stop(): Promise<void>;
}

/** The environment for a daemon the suite starts: nothing of the caller's deltad or systemd settings. */
export function daemonEnv(): NodeJS.ProcessEnv {
  const keep = ([k]: [string, unknown]) =>
    !k.startsWith('DELTAD_') && !k.startsWith('LISTEN_') && k !== 'NOTIFY_SOCKET';
  return Object.fromEntries(Object.entries(process.env).filter(keep));
}

/** `deltad serve` as a real process on 127.0.0.1 (port 0), configured only by flags. */
export async function startDeltad(args: string[]): Promise<DeltadProcess> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', '/dev/null', '--listen', '127.0.0.1:0', ...args], {
    env: daemonEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let port: number;
  try {
    port = await waitFor(`deltad serve to listen (stderr: ${stderr})`, () => {
      if (child.exitCode !== null) throw new Error(`deltad serve exited with ${child.exitCode}: ${stderr}`);
      const m = /listening 127\.0\.0\.1:(\d+)/.exec(stdout);
      return m ? Number(m[1]) : undefined;
    });
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    port,
    child,
    logs: () => stderr,
    async metric(name) {
      const text = await (await fetch(`${url}/metrics`)).text();
      const m = new RegExp(`^${name} (\\d+)$`, 'm').exec(text);
      if (!m) throw new Error(`metric ${name} not found`);
      return Number(m[1]);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

/** `node dist/daemon/cli.js ARGS` (deltad make, redirect, ...), bounded in time. */
export function deltad(args: string[]): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], 120_000);
}

// --- images -------------------------------------------------------------------

/** A deterministic byte stream (AES-128-CTR keystream) so every run builds the same images. */
class Stream {
  private readonly cipher;
  constructor(label: string) {
    const key = createHash('sha256').update(label).digest();
    this.cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  }
  bytes(n: number): Buffer {
    return this.cipher.update(Buffer.alloc(n));
  }
  int(max: number): number {
    return this.bytes(4).readUInt32LE(0) % max;
  }
}

const KiB = 1024;

/** The file tree of version 1: `files` files of 64 KiB .. 1.5 MiB (random, a few zero-filled). */
export function treeV1(files: number): Map<string, Buffer> {
  const s = new Stream('deltad e2e v1');
  const tree = new Map<string, Buffer>();
  for (let i = 0; i < files; i++) {
    const size = (1 + s.int(24)) * 64 * KiB;
    tree.set(`usr/lib/f${String(i).padStart(3, '0')}.bin`, s.int(8) === 0 ? Buffer.alloc(size) : s.bytes(size));
  }
  tree.set('usr/lib/os-release', Buffer.from('ID=e2e\nIMAGE_VERSION=1\n'));
  return tree;
}

/** The next version: two files rewritten, 64 KiB patched in a third, one removed, one added, a new os-release. */
export function nextTree(prev: Map<string, Buffer>, version: number): Map<string, Buffer> {
  const s = new Stream(`deltad e2e v${version}`);
  const tree = new Map(prev);
  const names = [...tree.keys()].filter((n) => n.endsWith('.bin')).sort();
  const pick = () => names[s.int(names.length)];
  for (let k = 0; k < 2; k++) {
    const n = pick();
    tree.set(n, s.bytes(tree.get(n)!.length));
  }
  const patched = pick();
  const data = Buffer.from(tree.get(patched)!);
  s.bytes(64 * KiB).copy(data, s.int(Math.max(1, data.length - 64 * KiB)));
  tree.set(patched, data);
  tree.delete(pick());
  tree.set(`usr/share/new-in-v${version}.bin`, s.bytes(512 * KiB));
  tree.set('usr/lib/os-release', Buffer.from(`ID=e2e\nIMAGE_VERSION=${version}\n`));
  return tree;
}

/** An uncompressed erofs image of the tree (mkfs.erofs, fixed timestamps). */
export async function makeErofs(tree: Map<string, Buffer>, workDir: string, out: string): Promise<Buffer> {
  const src = join(workDir, 'tree');
  await rm(src, { recursive: true, force: true });
  for (const [name, data] of tree) {
    await mkdir(join(src, name, '..'), { recursive: true });
    await writeFile(join(src, name), data);
  }
  must('mkfs.erofs', ['-T0', '--all-root', '-U', '6c1d2e3f-0000-4000-8000-00000000e2e0', '--quiet', out, src]);
  await rm(src, { recursive: true, force: true });
  return readFile(out);
}

/** SHA256SUMS over the files in `dir` (all but the manifest, or those `listed`), then its detached signature. */
export async function writeSignedSums(
  dir: string,
  key: SigningKey,
  listed: (name: string) => boolean = () => true,
): Promise<void> {
  const lines: string[] = [];
  for (const name of (await readdir(dir)).sort()) {
    if (name === 'SHA256SUMS' || name === 'SHA256SUMS.gpg' || !listed(name)) continue;
    if (!(await stat(join(dir, name))).isFile()) continue;
    lines.push(`${sha256(await readFile(join(dir, name)))}  ${name}`);
  }
  await writeFile(join(dir, 'SHA256SUMS'), lines.join('\n') + '\n');
  key.sign(join(dir, 'SHA256SUMS'));
}

/** Every regular file under `dir` (relative path → SHA-256), for before/after comparisons. */
export async function snapshot(
  dir: string,
  skip: (rel: string) => boolean = () => false,
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (skip(r)) continue;
      if (e.isDirectory()) await walk(r);
      else if (e.isFile()) out.set(r, sha256(await readFile(join(dir, r))));
    }
  };
  await walk('');
  return out;
}

/** True when running as root (sysupdate needs a mount namespace, which needs CAP_SYS_ADMIN). */
export const isRoot = process.getuid?.() === 0;

/** Skips, or under CI fails, when the suite cannot run here. */
export function requireE2E(t: { skip(msg: string): void }, ok: boolean, why: string): boolean {
  if (ok) return true;
  if (process.env.CI) throw new Error(`${why} (scripts/e2e-sysupdate.sh builds and installs what the suite needs)`);
  t.skip(why);
  return false;
}
