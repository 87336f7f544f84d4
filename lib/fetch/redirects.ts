// Redirect policy and the redirect cache of one HTTP client. Update servers
// send clients to mirrors and CDNs with 301/302/303/307/308; deltad follows at
// most a few hops, only to http(s), never from https down to http. The final
// URL of each redirected request is remembered for a while, so the hundreds of
// range requests of one image go straight to its mirror; and a CDN that
// redirects every store chunk separately teaches a prefix rule ("<a>/store/X"
// -> "<b>/store/X" for names like the one seen), so later chunks skip the
// redirector too. A cached or guessed target that fails or answers >= 400 is
// forgotten and the original URL asked again: the cache can cost a request,
// never a wrong answer (and every byte is verified against the index anyway).
import { RedirectError } from '../errors.js';

export const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

export interface RedirectOptions {
  /** Hops followed per request (default 10). */
  maxRedirects?: number;
  /** How long a learned target is used (default 10 minutes). */
  cacheMs?: number;
}

/** Exact URLs remembered at most (oldest dropped first). */
const MAX_ENTRIES = 20_000;
const MAX_RULES = 64;

interface Rule {
  from: string;
  to: string;
  /** Path segments after `from`, and the file name's extension, of the URL it was learned from. */
  depth: number;
  ext: string;
  expires: number;
}

export interface CachedTarget {
  url: string;
  /** True when it comes from a prefix rule rather than from this URL's own redirect. */
  guessed: boolean;
}

/** Where `location` (from a response to `from`) points; throws RedirectError when it may not be followed. */
export function redirectTarget(
  from: string,
  location: string | string[] | undefined,
  hops: number,
  max: number,
): string {
  if (typeof location !== 'string' || location === '') {
    throw new RedirectError(from, 'redirect without a Location header');
  }
  if (hops >= max) throw new RedirectError(from, `more than ${max} redirects`);
  let next: URL;
  try {
    next = new URL(location, from);
  } catch {
    throw new RedirectError(from, `invalid Location "${location.slice(0, 200)}"`);
  }
  if (next.protocol !== 'http:' && next.protocol !== 'https:') {
    throw new RedirectError(from, `to a ${next.protocol} URL`);
  }
  if (from.startsWith('https:') && next.protocol === 'http:') {
    throw new RedirectError(from, `from https down to http (${next.href})`);
  }
  next.hash = '';
  return next.href;
}

export function sameOrigin(a: string, b: string): boolean {
  return new URL(a).origin === new URL(b).origin;
}

const extOf = (name: string): string => {
  const dot = name.lastIndexOf('.');
  return dot <= 0 ? '' : name.slice(dot);
};

/**
 * URLs of one shape (origin, path depth, file-name extension) share a gate
 * while the first of them is on its way: a burst of store-chunk requests then
 * sends one to the redirector, not one per request in flight, and the rest use
 * the rule it teaches. Shapes answered without a redirect are never gated again.
 */
export function shapeOf(url: string): string {
  const u = new URL(url);
  const parts = u.pathname.split('/');
  return `${u.origin}|${parts.length}|${extOf(parts[parts.length - 1])}`;
}

export class RedirectCache {
  private readonly gates = new Map<string, Promise<void>>();
  private readonly direct = new Set<string>();
  private readonly exact = new Map<string, { url: string; expires: number }>();
  private readonly rules: Rule[] = [];
  readonly maxRedirects: number;
  private readonly cacheMs: number;
  /** Requests answered from the cache (no trip to the redirector), for tests and stats. */
  hits = 0;

  constructor(opts: RedirectOptions = {}) {
    this.maxRedirects = opts.maxRedirects ?? 10;
    this.cacheMs = opts.cacheMs ?? 10 * 60_000;
  }

  lookup(url: string, now = Date.now()): CachedTarget | undefined {
    const e = this.exact.get(url);
    if (e && e.expires > now) return { url: e.url, guessed: false };
    if (e) this.exact.delete(url);
    if (url.includes('?')) return undefined;
    for (const r of this.rules) {
      if (r.expires <= now || !url.startsWith(r.from)) continue;
      const rest = url.slice(r.from.length);
      const parts = rest.split('/');
      const alike = parts.length === r.depth && extOf(parts[parts.length - 1]) === r.ext;
      if (alike) return { url: r.to + rest, guessed: true };
    }
    return undefined;
  }

  /**
   * Waits while another URL of the same shape is being resolved for the first
   * time; returns a release function when this request is that first one.
   */
  async gate(url: string, signal?: AbortSignal): Promise<(() => void) | undefined> {
    if (url.includes('?')) return undefined;
    const shape = shapeOf(url);
    if (this.direct.has(shape)) return undefined;
    const pending = this.gates.get(shape);
    if (pending) {
      await (signal ? Promise.race([pending, abortPromise(signal)]) : pending);
      return undefined;
    }
    let open!: () => void;
    this.gates.set(shape, new Promise<void>((r) => (open = r)));
    return () => {
      this.gates.delete(shape);
      open();
    };
  }

  /** A URL of this shape was answered without a redirect: its shape needs no gate. */
  answeredDirectly(url: string): void {
    if (!url.includes('?')) this.direct.add(shapeOf(url));
  }

  /** Remembers that `from` ended at `to` (after at least one redirect). */
  learn(from: string, to: string, now = Date.now()): void {
    if (from === to) return;
    if (this.exact.size >= MAX_ENTRIES) this.exact.delete(this.exact.keys().next().value!);
    this.exact.delete(from);
    this.exact.set(from, { url: to, expires: now + this.cacheMs });
    this.learnRule(from, to, now);
  }

  /** A cached or guessed target failed: forget it (and the rule that guessed it). */
  forget(from: string, target: CachedTarget): void {
    if (!target.guessed) return void this.exact.delete(from);
    for (let k = this.rules.length - 1; k >= 0; k--) {
      const r = this.rules[k];
      if (from.startsWith(r.from) && target.url.startsWith(r.to)) this.rules.splice(k, 1);
    }
  }

  /** A rule from the longest common tail of whole path segments (the file name at least); none with queries. */
  private learnRule(from: string, to: string, now: number): void {
    if (from.includes('?') || to.includes('?')) return;
    const a = new URL(from);
    const b = new URL(to);
    const as = a.pathname.split('/');
    const bs = b.pathname.split('/');
    let n = 0;
    while (n < as.length - 1 && n < bs.length - 1 && as[as.length - 1 - n] === bs[bs.length - 1 - n]) n++;
    if (n === 0) return;
    const tail = as.slice(as.length - n).join('/');
    const rule: Rule = {
      from: from.slice(0, from.length - tail.length),
      to: to.slice(0, to.length - tail.length),
      depth: n,
      ext: extOf(as[as.length - 1]),
      expires: now + this.cacheMs,
    };
    const same = this.rules.findIndex((r) => r.from === rule.from && r.depth === rule.depth && r.ext === rule.ext);
    if (same >= 0) this.rules.splice(same, 1);
    if (this.rules.length >= MAX_RULES) this.rules.shift();
    this.rules.push(rule);
  }
}

function abortPromise(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
}
