// The daemon's configuration: defaults, then /etc/deltad/deltad.conf (INI-like
// `key = value`), then DELTAD_<KEY> environment variables, then command-line
// flags. Every key has all three spellings (see docs/CONFIG.md). Errors name the
// file and line (or the variable / flag) so a bad config fails clearly at start.
import { parseSize } from '../lib/util/size.js';
import { readFileSync } from 'node:fs';
import { UsageError } from '../lib/errors.js';
import type { OptionSpec } from './command.js';
import { AllowList, DEFAULT_ALLOW } from './access.js';
import {
  DEFAULT_CONCURRENCY,
  DEFAULT_LOW_SPEED_LIMIT,
  DEFAULT_LOW_SPEED_TIME_MS,
  DEFAULT_MAX_TARGET_SIZE,
} from '../lib/util/defaults.js';

export type PassthroughMode = 'redirect' | 'proxy';

export interface DaemonConfig {
  /** Base URL that every request path is resolved against; ends with '/'. Empty when unset. */
  origin: string;
  /** Globs of local seed images (wildcards in the file name only). */
  seedGlobs: string[];
  /** File-name globs of the images deltad assembles; everything else passes through. */
  imagePatterns: string[];
  /** Legacy: suffix appended to an image URL to find its index (the fleet proxy still uses it). */
  indexSuffix: string;
  /**
   * Index file names tried in order beside an image (origin) or a seed (local):
   * `{name}` is the image file name, `{stem}` the name without its last extension.
   */
  indexNames: string[];
  /** Root under which sysupdate.d transfer definitions are read (version names, adoption). */
  sysupdateRoot: string;
  /** Optional casync chunk-store URL (store mode); empty = byte ranges against the image. */
  store: string;
  /** Where seed indexes and in-flight assemblies live. */
  cacheDir: string;
  /** Seconds without requests before the daemon exits; 0 = never. */
  idleTimeout: number;
  /** Parallel origin requests per assembly. */
  concurrency: number;
  /** Largest image an index may describe, in bytes (guards memory and disk). */
  maxTargetSize: number;
  passthrough: PassthroughMode;
  /** host:port to listen on when systemd passes no socket. */
  listen: string;
  /** Fleet proxy (`deltad proxy`, docs/FLEET.md): upstream base URL, '/'-terminated; empty when unset. */
  upstream: string;
  /** Fleet proxy: the upstream's casync chunk store; empty = byte ranges of the upstream images. */
  upstreamStore: string;
  /** Fleet proxy: chunk and metadata cache directory, and its size limit in bytes. */
  proxyCache: string;
  proxyCacheSize: number;
  /** Fleet proxy: client networks allowed (CIDR) and concurrent requests per client. */
  allow: string[];
  clientConcurrency: number;
  /** PEM file of CA certificates trusted besides the system store (private update server); empty = none. */
  caFile: string;
  /** Origin answers slower than lowSpeedLimit bytes/s for lowSpeedTime seconds are aborted and retried (0 = off). */
  lowSpeedLimit: number;
  lowSpeedTime: number;
}

export const DEFAULT_CONFIG_FILE = '/etc/deltad/deltad.conf';

interface KeySpec {
  field: keyof DaemonConfig;
  list?: boolean;
  parse(value: string): unknown;
  /** Sets fields derived from this one (a legacy key that is an alias of another). */
  derive?(config: DaemonConfig): void;
}

const KEYS: Record<string, KeySpec> = {
  origin: { field: 'origin', parse: parseOrigin },
  'seed-glob': { field: 'seedGlobs', list: true, parse: parseAbsoluteGlob },
  'image-pattern': { field: 'imagePatterns', list: true, parse: parseNamePattern },
  'index-suffix': {
    field: 'indexSuffix',
    parse: parseIndexSuffix,
    derive: (c) => (c.indexNames = [`{name}${c.indexSuffix}`]),
  },
  'index-name': { field: 'indexNames', parse: parseIndexNames },
  'sysupdate-root': { field: 'sysupdateRoot', parse: parseAbsolutePath },
  store: { field: 'store', parse: (v) => (v === '' ? '' : parseHttpUrl(v)) },
  'cache-dir': { field: 'cacheDir', parse: parseAbsolutePath },
  'idle-timeout': { field: 'idleTimeout', parse: (v) => parseNumber(v, 0, 7 * 24 * 3600) },
  concurrency: { field: 'concurrency', parse: (v) => parseNumber(v, 1, 256, true) },
  'max-target-size': { field: 'maxTargetSize', parse: parseByteSize },
  passthrough: { field: 'passthrough', parse: parsePassthrough },
  listen: { field: 'listen', parse: parseListen },
  upstream: { field: 'upstream', parse: parseOrigin },
  'upstream-store': { field: 'upstreamStore', parse: (v) => (v === '' ? '' : parseHttpUrl(v)) },
  'proxy-cache': { field: 'proxyCache', parse: parseAbsolutePath },
  'proxy-cache-size': { field: 'proxyCacheSize', parse: parseByteSize },
  allow: { field: 'allow', list: true, parse: parseNetwork },
  'client-concurrency': { field: 'clientConcurrency', parse: (v) => parseNumber(v, 1, 10_000, true) },
  'ca-file': { field: 'caFile', parse: (v) => (v === '' ? '' : parseAbsolutePath(v)) },
  'low-speed-limit': { field: 'lowSpeedLimit', parse: parseRate },
  'low-speed-time': { field: 'lowSpeedTime', parse: (v) => parseNumber(v, 1, 3600) },
};

export function defaultConfig(env: NodeJS.ProcessEnv = process.env): DaemonConfig {
  return {
    origin: '',
    seedGlobs: ['/system/*.erofs', '/system/*.raw', '/system/*.img'],
    imagePatterns: ['*.erofs', '*.raw', '*.img'],
    indexSuffix: '.caibx',
    // KDE Linux publishes X_root-x86-64.caibx for X_root-x86-64.erofs (systemd #38605);
    // casync/desync use X.erofs.caibx.
    indexNames: ['{stem}.caibx', '{name}.caibx'],
    sysupdateRoot: '/',
    store: '',
    // systemd's CacheDirectory=deltad sets $CACHE_DIRECTORY.
    cacheDir: env.CACHE_DIRECTORY?.split(':')[0] || '/var/cache/deltad',
    idleTimeout: 300,
    concurrency: DEFAULT_CONCURRENCY,
    maxTargetSize: DEFAULT_MAX_TARGET_SIZE,
    passthrough: 'redirect',
    listen: '127.0.0.1:3129',
    upstream: '',
    upstreamStore: '',
    proxyCache: '/var/cache/deltad-proxy',
    proxyCacheSize: 10 * 1024 ** 3,
    allow: [...DEFAULT_ALLOW],
    clientConcurrency: 64,
    caFile: '',
    lowSpeedLimit: DEFAULT_LOW_SPEED_LIMIT,
    lowSpeedTime: DEFAULT_LOW_SPEED_TIME_MS / 1000,
  };
}

/** parseArgs options for every config key (shared by serve, redirect, plan...). */
export const configOptions: OptionSpec = {
  config: { type: 'string' },
  ...Object.fromEntries(Object.entries(KEYS).map(([k, s]) => [k, { type: 'string', multiple: Boolean(s.list) }])),
};

export const configUsage = `Configuration (file ${DEFAULT_CONFIG_FILE}, env DELTAD_<KEY>, or flags; flags win):
  --config FILE            configuration file (default ${DEFAULT_CONFIG_FILE}, optional)
  --origin URL             origin base URL request paths are resolved against
  --seed-glob GLOB         local seed images (repeatable; default /system/*.erofs /system/*.raw /system/*.img)
  --image-pattern GLOB     file names served as deltas (repeatable; default *.erofs *.raw *.img)
  --index-name TEMPLATES   index file names beside each image, tried in order; {name} = image file name,
                           {stem} = it without its last extension (default {stem}.caibx,{name}.caibx)
  --index-suffix SUFFIX    legacy: the same as --index-name {name}SUFFIX
  --sysupdate-root DIR     where sysupdate.d transfer definitions are read (default /)
  --store URL              casync chunk store to fetch missing chunks from (default: byte ranges)
  --cache-dir DIR          seed index cache and adopted indexes (default $CACHE_DIRECTORY or /var/cache/deltad)
  --idle-timeout SECONDS   exit after this long without requests; 0 = never (default 300)
  --concurrency N          parallel origin requests per assembly (default 8)
  --max-target-size SIZE   largest image an index may describe, e.g. 8G (default 64G)
  --passthrough MODE       redirect (307 to the origin) or proxy (stream through) (default redirect)
  --listen HOST:PORT       address when not socket-activated (default 127.0.0.1:3129)
  --ca-file FILE           PEM CA certificates trusted besides the system store (private update server)
  --low-speed-limit RATE   abort and retry origin answers slower than RATE bytes/s, e.g. 1K; 0 = off (default 1K)
  --low-speed-time SECONDS ... for this long (default 30)
Fleet proxy (deltad proxy):
  --upstream URL           upstream base URL every request path is served from
  --upstream-store URL     the upstream's casync chunk store (default: byte ranges of its images)
  --proxy-cache DIR        chunk and metadata cache (default /var/cache/deltad-proxy)
  --proxy-cache-size SIZE  chunk cache limit, e.g. 500M, 20G (default 10G)
  --allow CIDR             client networks allowed (repeatable; default loopback and private ranges)
  --client-concurrency N   concurrent requests per client address (default 64)`;

export interface LoadConfigInput {
  values?: Record<string, string | boolean | string[] | undefined>;
  env?: NodeJS.ProcessEnv;
}

/** Resolves the configuration from defaults, file, environment and flags. */
export function loadConfig({ values = {}, env = process.env }: LoadConfigInput = {}): DaemonConfig {
  const config = defaultConfig(env);
  const explicitFile = (values.config as string | undefined) ?? env.DELTAD_CONFIG;
  const file = explicitFile ?? DEFAULT_CONFIG_FILE;
  let text: string | undefined;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // The default file is optional (flags alone are enough); a named one is not.
    if (!(code === 'ENOENT' && explicitFile === undefined))
      throw new UsageError(`${file}: cannot read configuration: ${code ?? (err as Error).message}`);
  }
  if (text !== undefined) applyFile(config, text, file);

  for (const [key, spec] of Object.entries(KEYS)) {
    const name = `DELTAD_${key.toUpperCase().replace(/-/g, '_')}`;
    const v = env[name];
    if (v !== undefined) setKey(config, spec, spec.list ? splitList(v) : [v.trim()], `environment variable ${name}`);
  }
  for (const [key, spec] of Object.entries(KEYS)) {
    const v = values[key];
    if (v === undefined) continue;
    setKey(config, spec, Array.isArray(v) ? v : [String(v)], `option --${key}`);
  }
  return config;
}

/** Parses the configuration file format: `key = value`, `#` comment lines, blank lines. */
function applyFile(config: DaemonConfig, text: string, file: string): void {
  const seenLists = new Set<string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${file}:${i + 1}`;
    const eq = line.indexOf('=');
    if (eq < 0) throw new UsageError(`${where}: expected "key = value", got "${line}"`);
    const key = line.slice(0, eq).trim();
    const spec = KEYS[key];
    if (!spec) throw new UsageError(`${where}: unknown key "${key}" (known: ${Object.keys(KEYS).join(', ')})`);
    const value = line.slice(eq + 1).trim();
    if (spec.list) {
      // A list key may be repeated; the file's lines replace the default list.
      const prev = seenLists.has(key) ? (config[spec.field] as string[]) : [];
      seenLists.add(key);
      setKey(config, spec, [...prev, ...splitList(value)], where);
    } else {
      setKey(config, spec, [value], where);
    }
  }
}

function setKey(config: DaemonConfig, spec: KeySpec, values: string[], where: string): void {
  try {
    const parsed = values.map((v) => spec.parse(v));
    (config as unknown as Record<string, unknown>)[spec.field] = spec.list ? parsed : parsed[parsed.length - 1];
    spec.derive?.(config);
  } catch (err) {
    throw new UsageError(`${where}: ${(err as Error).message}`);
  }
}

function splitList(v: string): string[] {
  return v.split(/\s+/).filter(Boolean);
}

function parseHttpUrl(v: string): string {
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    throw new Error(`"${v}" is not a valid URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new Error(`"${v}": only http:// and https:// URLs are supported`);
  if (url.search || url.hash || url.username || url.password)
    throw new Error(`"${v}": query, fragment and credentials are not allowed in a base URL`);
  return url.href;
}

/** The origin is a directory-like base: always ends with '/'. */
function parseOrigin(v: string): string {
  if (v === '') return '';
  const href = parseHttpUrl(v);
  return href.endsWith('/') ? href : href + '/';
}

function parseAbsoluteGlob(v: string): string {
  if (!v.startsWith('/')) throw new Error(`seed glob "${v}" must be an absolute path`);
  const dir = v.slice(0, v.lastIndexOf('/'));
  if (/[*?[]/.test(dir)) throw new Error(`seed glob "${v}": wildcards are only allowed in the file name`);
  return v;
}

function parseNamePattern(v: string): string {
  if (v.includes('/')) throw new Error(`image pattern "${v}" matches file names and cannot contain '/'`);
  return v;
}

function parseIndexSuffix(v: string): string {
  if (!/^\.[A-Za-z0-9._-]+$/.test(v))
    throw new Error(`index suffix "${v}" must start with '.' and contain only letters, digits, '.', '_' or '-'`);
  return v;
}

/** Comma-separated index name templates, each using {name} or {stem} once, e.g. "{stem}.caibx,{name}.caibx". */
function parseIndexNames(v: string): string[] {
  const names = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.length === 0) throw new Error('index-name needs at least one template such as {name}.caibx');
  for (const n of names) {
    const bare = n.replace(/\{(name|stem)\}/g, '');
    if (bare.length === n.length) throw new Error(`index name "${n}" must contain {name} or {stem}`);
    if (!/^[A-Za-z0-9._-]*$/.test(bare) || n === '{name}') {
      throw new Error(
        `index name "${n}": besides {name}/{stem} only letters, digits, '.', '_' or '-',` +
          ' and not the image name itself',
      );
    }
  }
  return names;
}

function parseAbsolutePath(v: string): string {
  if (!v.startsWith('/')) throw new Error(`"${v}" must be an absolute path`);
  return v;
}

function parseNumber(v: string, min: number, max: number, integer = false): number {
  const n = Number(v);
  if (v === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new Error(`"${v}" is not ${integer ? 'an integer' : 'a number'} between ${min} and ${max}`);
  }
  return n;
}

function parsePassthrough(v: string): PassthroughMode {
  if (v !== 'redirect' && v !== 'proxy') throw new Error(`passthrough "${v}" must be "redirect" or "proxy"`);
  return v;
}

/** Bytes per second with an optional K/M/G suffix (powers of 1024); 0 switches the limit off. */
export function parseRate(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?(?:\/s)?$/i.exec(v.trim());
  if (!m) throw new Error(`"${v}" is not a rate in bytes per second (e.g. 1K, 512, 0)`);
  return Math.floor(Number(m[1]) * 1024 ** ' KMG'.indexOf((m[2] || ' ').toUpperCase()));
}

/** The HTTP client settings of a configuration (TLS trust and transfer limits). */
export function httpOptionsOf(config: DaemonConfig): {
  caFile?: string;
  limits: { lowSpeedLimit: number; lowSpeedTimeMs: number };
} {
  return {
    caFile: config.caFile || undefined,
    limits: { lowSpeedLimit: config.lowSpeedLimit, lowSpeedTimeMs: config.lowSpeedTime * 1000 },
  };
}

/** A byte count with an optional K/M/G/T suffix (powers of 1024). */
function parseByteSize(v: string): number {
  const n = parseSize(v, 'size');
  if (n < 1024 * 1024) throw new Error(`size "${v}" is below the 1M minimum`);
  return n;
}

function parseNetwork(v: string): string {
  new AllowList([v]); // throws with the reason
  return v;
}

/** host:port, [v6]:port; port 0 picks a free port (tests). */
function parseListen(v: string): string {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+):(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) > 65535) throw new Error(`listen address "${v}" must be HOST:PORT (e.g. 127.0.0.1:3129)`);
  return v;
}

export function splitListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  return { host: listen.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port: Number(listen.slice(i + 1)) };
}

/** Fails clearly when the daemon cannot run: it needs an origin. */
export function requireOrigin(config: DaemonConfig): string {
  if (!config.origin)
    throw new UsageError(
      `no origin configured: set "origin = URL" in ${DEFAULT_CONFIG_FILE}, DELTAD_ORIGIN, or --origin`,
    );
  return config.origin;
}
