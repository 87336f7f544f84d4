// Serving one image request as a delta, with the "never a wrong image" rules:
// - no index on the origin, or any failure before the response headers: a full
//   pass-through (307 to the origin, or proxied);
// - headers are sent once the first verified byte is ready, or after
//   headerMs (1.9 s) after the request at the latest (sysupdate wants an answer within seconds); a
//   failure after that but before the first body byte streams the origin's
//   full file under the same headers, checked for size and SHA-256;
// - an index slower than prepareMs does not force a full download: a HEAD of
//   the image, sent alongside the index fetch, gives the length for the
//   headers, and the delta goes on once the index arrives (its size must match);
// - when the origin is a deltad proxy (docs/FLEET.md), missing chunks come from
//   its batch endpoint: a handful of requests instead of one per chunk;
// - after the first body byte the engine retries internally; if the image
//   still cannot be completed correctly, the socket is destroyed, so the
//   client sees a truncated download. The engine holds back the final bytes
//   until the whole-file SHA-256 matches the origin's SHA256SUMS entry.
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { OriginError } from '../lib/errors.js';
import {
  arrivingHeadBytes,
  openExtractStream,
  planUpdate,
  type ExtractProgress,
  type PlanReport,
  type SourceOptions,
} from '../lib/delta/extract.js';
import type { HttpClient } from '../lib/fetch/http-client.js';
import { openProxyStore } from '../lib/fleet/batch-store.js';
import type { ChunkStore } from '../lib/store/types.js';
import type { PreparedImage, ReleaseTarget, Releases } from '../lib/delta/release.js';
import type { ChunkIndex } from '../lib/format/caibx.js';
import type { Arrival, AssemblyRegistry, SharedAssembly } from './assemblies.js';
import type { DaemonConfig } from './config.js';
import type { Logger } from './log.js';
import type { DaemonCounters } from './metrics.js';
import type { Notifier } from './notify.js';
import { indexFileNames } from './index-names.js';
import { siblingUrl, type OriginTarget } from './origin-path.js';
import { passThrough, withQuery, type PassThroughContext } from './passthrough.js';
import type { SeedCatalog } from './seeds.js';
import { verifiedBody } from './verified-body.js';
import { writeFileAtomic } from '../lib/util/fs-io.js';
import { formatBytes } from './progress.js';

/** The deadlines of serving an image (tests shorten them). */
export interface ImageTimeouts {
  /** Fetching the index and SHA256SUMS (and checking ranges); past it, the image is passed through. */
  prepareMs: number;
  /** Response headers go out this long after the request at the latest, even before the first verified byte. */
  headerMs: number;
  /** Past prepareMs, the longest wait for the index or the image's length (a HEAD) before passing the image through. */
  answerMs: number;
  /** Longest wait for the first body byte after the headers (curl's low-speed abort is 60 s). */
  firstByteMs: number;
  /** An assembly with no new verified byte for this long is ended (see assemblies.ts). */
  stallMs: number;
}

export const DEFAULT_TIMEOUTS: ImageTimeouts = {
  prepareMs: 1_500,
  headerMs: 1_900,
  answerMs: 10_000,
  firstByteMs: 40_000,
  stallMs: 45_000,
};
const STATUS_EVERY_MS = 1_000;

/**
 * A delta begun from the start of the image's index while the rest of it downloads (Releases.indexHead): the
 * image's length from the HEAD, and the whole preparation to come (which may still fail: then so does the stream).
 */
interface EarlyImage {
  head: ChunkIndex;
  size: number;
  sha256?: string;
  /** This image version, as far as known before the whole index: its URL, length and SHA-256. */
  key: string;
  whole: Promise<PreparedImage | undefined>;
}

/** What a delta is served from: the prepared image, or the start of its index (EarlyImage). */
type DeltaImage = PreparedImage | EarlyImage;

const isEarly = (d: DeltaImage): d is EarlyImage => 'whole' in d;
const sizeOf = (d: DeltaImage): number => (isEarly(d) ? d.size : d.index.size);
/** An origin found not to be a deltad proxy (or unreachable) is asked again at most this often. */
const PROXY_PROBE_EVERY_MS = 60_000;

export interface ImageServiceDeps {
  config: DaemonConfig;
  http: HttpClient;
  counters: DaemonCounters;
  log: Logger;
  notifier: Notifier;
  seeds: SeedCatalog;
  assemblies: AssemblyRegistry;
  releases: Releases;
  passThrough: PassThroughContext;
  timeouts: ImageTimeouts;
}

export class ImageService {
  private lastStatus = 0;
  private indexTemplate: string | undefined;
  private proxyProbe?: { at: number; store: Promise<ChunkStore | null> };
  constructor(private readonly d: ImageServiceDeps) {
    this.indexTemplate = keptIndexTemplate(d.config);
  }

  /** Where the image, its index and its SHA256SUMS live on the origin. */
  private release(target: OriginTarget): ReleaseTarget {
    return {
      url: target.url,
      name: target.name,
      indexUrls: this.indexUrls(target),
      sumsUrl: siblingUrl(target.url, 'SHA256SUMS'),
    };
  }

  /**
   * The image's index and expected SHA-256 (shared by concurrent requests, see lib/delta/release.ts); undefined when
   * the origin has no index for it. `sha256` is the SHA256SUMS lookup (serve() keeps it for fallbacks).
   */
  prepare(target: OriginTarget, sha256 = this.expectedSha256(target)): Promise<PreparedImage | undefined> {
    return this.d.releases.prepare(this.release(target), sha256).then((p) => {
      if (p) this.noteIndexUrl(target, p.indexUrl);
      return p;
    });
  }

  /**
   * Starts the preparation of `target` before it is asked for (a SHA256SUMS listing it passed through, see
   * announced.ts): the image request that follows shares it instead of starting it.
   */
  prepareAhead(target: OriginTarget): Promise<PreparedImage | undefined> {
    return this.startPreparation(target, true).ready;
  }

  /**
   * Candidate index URLs of the image, in index-name order, except that the
   * template that answered last comes first: a miss costs one extra request
   * once per daemon run, not on every download.
   */
  indexUrls(target: OriginTarget): string[] {
    const templates = this.d.config.indexNames;
    const first = this.indexTemplate;
    const order = first === undefined ? templates : [first, ...templates.filter((t) => t !== first)];
    return order.flatMap((t) => indexFileNames(target.name, [t]).map((n) => siblingUrl(target.url, n)));
  }

  /**
   * Records which candidate answered, so it is asked first next time, also by the daemon started for the next
   * update (this one exits when idle): kept in the cache directory.
   */
  private noteIndexUrl(target: OriginTarget, url: string): void {
    const answers = (t: string) => indexFileNames(target.name, [t]).some((n) => siblingUrl(target.url, n) === url);
    const found = this.d.config.indexNames.find(answers);
    if (found === undefined || found === this.indexTemplate) return;
    this.indexTemplate = found;
    // Only an order of requests: a lost or stale file costs one 404.
    writeFileAtomic(join(this.d.config.cacheDir, INDEX_NAME_FILE), `${found}\n`, { durable: false }).catch((err) =>
      this.d.log.warn(`cannot keep the index name that answered: ${(err as Error).message}`),
    );
  }

  /** What the "no index" messages name. */
  private get indexWhat(): string {
    return `index (${this.d.config.indexNames.join(', ')})`;
  }

  /** The image's entry in the SHA256SUMS beside it, if any. */
  private expectedSha256(target: OriginTarget): Promise<string | undefined> {
    return this.d.releases.sha256(this.release(target));
  }

  /**
   * The batch store of the origin when it is a deltad proxy, else null. Probed
   * once and kept for the daemon's life; a negative answer (or a failed probe)
   * is asked again at most once a minute. A configured chunk store wins.
   */
  private proxyStore(): Promise<ChunkStore | null> {
    if (this.d.config.store) return Promise.resolve(null);
    const last = this.proxyProbe;
    if (last && Date.now() - last.at < PROXY_PROBE_EVERY_MS) return last.store;
    const store = openProxyStore(this.d.config.origin, { client: this.d.http }).catch(() => null);
    const probe = { at: Date.now(), store };
    this.proxyProbe = probe;
    void store.then((s) => {
      // Found: never probe again (a proxy does not stop being one).
      if (s) probe.at = Infinity;
      this.d.log.info(
        s
          ? `origin is a deltad proxy: missing chunks come from its batch endpoint ${s.location}`
          : 'origin is not a deltad proxy: missing chunks come as byte ranges',
      );
    });
    return store;
  }

  /** Where missing bytes of `target` come from (shared by assembly and the plan endpoint). */
  async sources(target: OriginTarget, index: ChunkIndex, signal?: AbortSignal): Promise<SourceOptions> {
    const c = this.d.config;
    const proxy = await this.proxyStore();
    return {
      seeds: await this.d.seeds.seedsFor(target.name, index),
      rangeUrl: target.url,
      stores: c.store ? [c.store] : proxy ? [proxy] : undefined,
      // The proxy's batches come from its shared cache; ranges or a block pack would bypass it.
      mode: proxy ? 'store' : 'auto',
      blockPack: !proxy,
      // Sent with the index (startPreparation): the route choice does not wait a round trip for it.
      blockIndexAnswer: proxy ? undefined : this.d.releases.blockIndex(target.url),
      cacheDir: c.cacheDir,
      http: this.d.http,
      signal,
      onWarning: (m) => this.d.log.warn(`${target.relPath}: ${m}`),
    };
  }

  /** The update-size query: what would come from seeds and from the network. */
  async plan(target: OriginTarget, signal?: AbortSignal): Promise<(PlanReport & { sha256?: string }) | undefined> {
    const prepared = await this.prepare(target);
    if (!prepared) return undefined;
    await this.d.seeds.ready;
    const sources = await this.sources(target, prepared.index, signal);
    // The range probe's first bytes (fetched now if not yet, as the index is): an update started next takes the
    // missing chunks within them from there, and the update size counts them out.
    const report = await planUpdate(prepared.index, { ...sources, imageStart: this.imageStart(target) });
    return { ...report, sha256: prepared.sha256 };
  }

  async serve(method: 'GET' | 'HEAD', target: OriginTarget, res: ServerResponse): Promise<void> {
    // Counted until it joins an assembly or leaves: a running one keeps the image's start for it.
    const arrival = method === 'GET' ? this.d.assemblies.arrival(target.url) : undefined;
    try {
      await this.serveImage(method, target, res, arrival);
    } finally {
      arrival?.done();
    }
  }

  private async serveImage(
    method: 'GET' | 'HEAD',
    target: OriginTarget,
    res: ServerResponse,
    arrival: Arrival | undefined,
  ): Promise<void> {
    const { timeouts } = this.d;
    const started = Date.now();
    const ac = new AbortController();
    // A client that leaves, or a request that takes another path than an assembly, is no longer on its way to one.
    res.once('close', () => {
      ac.abort();
      arrival?.done();
    });
    const { sha256, ready, head, early } = this.startPreparation(target, method === 'GET');
    let prepared: DeltaImage | undefined;
    try {
      prepared = await withDeadline(
        firstOf(ready, early),
        timeouts.prepareMs,
        `index of ${target.relPath} not fetched within ${timeouts.prepareMs} ms`,
      );
    } catch (err) {
      if (!(err instanceof DeadlineError) || method === 'HEAD') {
        arrival?.done();
        return this.fallBack(method, target, res, ac.signal, (err as Error).message, sha256);
      }
      // Under load (a burst of clients, a busy link) the HEAD may be late too. A full download from the same slow
      // origin would not come sooner, so the request waits for whichever answers first, up to answerMs.
      const late = await lateAnswer(ready, head, started + timeouts.answerMs);
      if (late.kind === 'length') {
        const off = (await head).deltaOff;
        if (off) {
          arrival?.done();
          return this.switchedOff(method, target, res, ac.signal, off);
        }
        return this.serveAnnounced(target, late.length, ready, sha256, res, ac.signal, arrival, started);
      }
      if (late.kind === 'none') {
        const why = late.why ?? `${(err as Error).message}, nor its length within ${timeouts.answerMs} ms`;
        arrival?.done();
        return this.fallBack(method, target, res, ac.signal, why, sha256);
      }
      prepared = late.prepared;
    }
    if (!prepared) {
      arrival?.done();
      return this.fallBack(method, target, res, ac.signal, `no ${this.indexWhat} on the origin`, sha256);
    }
    const off = (await withDeadline(head, timeouts.prepareMs, 'HEAD late').catch(() => undefined))?.deltaOff;
    if (off) {
      arrival?.done();
      return this.switchedOff(method, target, res, ac.signal, off);
    }
    if (isEarly(prepared))
      this.d.log.info(
        `${target.relPath}: delta begun ${Date.now() - started} ms after the request from the index's first ${prepared.head.count} chunks, the rest still on its way`,
      );
    if (method === 'HEAD') {
      res.writeHead(200, imageHeaders(sizeOf(prepared)));
      res.end();
      return;
    }
    return this.deliver(
      target,
      prepared,
      res,
      ac.signal,
      { headersBy: started + timeouts.headerMs, requested: started },
      arrival,
    );
  }

  /** The release's kill switch is set: the origin's image, untouched. */
  private switchedOff(
    method: 'GET' | 'HEAD',
    target: OriginTarget,
    res: ServerResponse,
    signal: AbortSignal,
    off: string,
  ) {
    this.d.log.notice(`${target.relPath}: the origin switches deltas off (${off}); passing the full image through`);
    return passThrough(this.d.passThrough, method, withQuery(target.url, target.search), res, signal);
  }

  /**
   * The index was late but a HEAD gave the image's length: headers go out now
   * with it, and the delta follows once the index arrives and matches. Anything
   * else streams the origin's full image under those headers.
   */
  private async serveAnnounced(
    target: OriginTarget,
    size: number,
    ready: Promise<PreparedImage | undefined>,
    sha256: Promise<string | undefined>,
    res: ServerResponse,
    signal: AbortSignal,
    arrival: Arrival | undefined,
    requested: number,
  ): Promise<void> {
    const { counters, log, timeouts } = this.d;
    sendHeaders(res, size);
    const firstByteBy = Date.now() + timeouts.firstByteMs;
    log.info(
      `${target.relPath}: index not fetched within ${timeouts.prepareMs} ms; headers sent with the origin's length (${size} bytes), still preparing`,
    );
    let prepared: PreparedImage | undefined;
    let why: string | undefined;
    try {
      prepared = await withDeadline(
        ready,
        timeouts.firstByteMs,
        `index of ${target.relPath} not fetched within ${timeouts.prepareMs + timeouts.firstByteMs} ms`,
      );
      if (!prepared) why = `no ${this.indexWhat} on the origin`;
      else if (prepared.index.size !== size)
        why = `its index describes ${prepared.index.size} bytes, the origin's HEAD said ${size}`;
    } catch (err) {
      why = (err as Error).message;
    }
    if (prepared && !why) return this.deliver(target, prepared, res, signal, { firstByteBy, requested }, arrival);
    arrival?.done();
    counters.fallbacks++;
    log.warn(`${target.relPath}: ${why}; streaming the full image from the origin`);
    const expected = prepared
      ? prepared.sha256
      : await withDeadline(sha256, Math.max(0, firstByteBy - Date.now()), 'SHA256SUMS late').catch(() => undefined);
    return this.proxyWhole(target, size, expected, res, signal);
  }

  /**
   * Streams the shared assembly of `prepared`. Headers go out with the first
   * verified byte or at `headersBy`, unless already sent (then `firstByteBy`
   * is given); no first byte by the first-byte deadline: the origin's full image instead.
   */
  private async deliver(
    target: OriginTarget,
    prepared: DeltaImage,
    res: ServerResponse,
    signal: AbortSignal,
    deadline: ({ headersBy: number } | { firstByteBy: number }) & { requested: number },
    arrival: Arrival | undefined,
  ): Promise<void> {
    const { counters, log } = this.d;
    const size = sizeOf(prepared);
    // A request that comes after the whole index joins the delta an earlier one began from its start: the same
    // URL, length and SHA-256 entry is the same image (without an entry, it starts its own).
    const early = !isEarly(prepared) && prepared.sha256 ? earlyKey(target, size, prepared.sha256) : undefined;
    const { assembly, created } = this.d.assemblies.acquire(
      prepared.key,
      size,
      (s) => this.startEngine(target, prepared, s),
      arrival,
      early,
    );
    const client = assembly.join();
    // A client that leaves while we wait for the first byte releases its share at once
    // (via the request's signal: every extra 'close' listener on `res` counts against its limit).
    if (signal.aborted) client.leave();
    else signal.addEventListener('abort', () => client.leave(), { once: true });
    if (created) this.watch(target, prepared, assembly);
    else
      log.info(
        `${target.relPath}: sharing the assembly of an earlier request (${assembly.finished ? 'finished and verified' : 'in progress'})`,
      );

    let state: FirstByte = 'timeout';
    let firstByteBy: number;
    if ('firstByteBy' in deadline) firstByteBy = deadline.firstByteBy;
    else {
      state = await firstByteWithin(assembly, deadline.headersBy - Date.now());
      if (state === 'failed') {
        client.leave();
        return this.fallBack(
          'GET',
          target,
          res,
          signal,
          `assembly failed before the first byte: ${assembly.error?.message}`,
          prepared.sha256,
        );
      }
      sendHeaders(res, size);
      firstByteBy = Date.now() + this.d.timeouts.firstByteMs;
    }
    if (state === 'timeout') state = await firstByteWithin(assembly, firstByteBy - Date.now());
    if (state !== 'ready') {
      client.leave();
      counters.fallbacks++;
      log.warn(
        `${target.relPath}: ${state === 'failed' ? `assembly failed before the first byte: ${assembly.error?.message}` : 'no byte assembled in time'}; streaming the full image from the origin`,
      );
      return this.proxyWhole(target, size, prepared.sha256, res, signal);
    }
    log.info(`${target.relPath}: first body byte ready ${Date.now() - deadline.requested} ms after the request`);
    try {
      await client.send(res, (n) => {
        counters.bytesServed += n;
      });
    } catch (err) {
      // send() has cut the connection: never a wrong or partial image presented as complete.
      if (!res.writableFinished) {
        if (!signal.aborted)
          log.error(
            `${target.relPath}: download aborted after ${formatBytes(assembly.written)}: ${(err as Error).message}`,
          );
      }
    }
  }

  /**
   * The origin's full image; proxied, it is checked against `sha256` (awaited only at its end, when still on its
   * way).
   */
  private async fallBack(
    method: 'GET' | 'HEAD',
    target: OriginTarget,
    res: ServerResponse,
    signal: AbortSignal,
    why: string,
    sha256: string | undefined | Promise<string | undefined>,
  ): Promise<void> {
    this.d.counters.fallbacks++;
    this.d.log.warn(`${target.relPath}: ${why}; passing the full image through (${this.d.passThrough.mode})`);
    try {
      await passThrough(this.d.passThrough, method, withQuery(target.url, target.search), res, signal, sha256);
    } catch (err) {
      // Headers are out: a body that is cut or does not match its SHA256SUMS entry reaches the client truncated.
      res.destroy();
      if (!signal.aborted) this.d.log.error(`${target.relPath}: pass-through aborted: ${(err as Error).message}`);
    }
  }

  /** Full image from the origin under already-sent headers: exact size and SHA-256, or a cut connection. */
  private async proxyWhole(
    target: OriginTarget,
    size: number,
    sha256: string | undefined,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const { http, log } = this.d;
    try {
      const up = await http.withRetry(async () => {
        const r = await http.request(target.url, { signal });
        if (r.statusCode !== 200) {
          await r.body.dump();
          throw new OriginError(`GET ${target.url}: HTTP ${r.statusCode}`, {
            status: r.statusCode,
            transient: r.statusCode >= 500,
          });
        }
        return r;
      }, signal);
      const declared = Number(up.headers['content-length']);
      if (declared !== size) {
        up.body.destroy();
        throw new OriginError(`GET ${target.url}: ${declared} bytes, but ${size} were announced`);
      }
      await pipeline(up.body, verifiedBody(size, sha256, target.url), res);
    } catch (err) {
      res.destroy();
      if (!signal.aborted)
        log.error(`${target.relPath}: full-image fallback failed, download aborted: ${(err as Error).message}`);
    }
  }

  private async startEngine(target: OriginTarget, prepared: DeltaImage, signal: AbortSignal) {
    // Seeds being indexed in the background would otherwise be chunked twice.
    await this.d.seeds.ready;
    const sources = await this.sources(target, isEarly(prepared) ? prepared.head : prepared.index, signal);
    let last: ExtractProgress | undefined;
    const index = isEarly(prepared) ? { ...prepared, whole: wholeIndex(target, prepared) } : prepared.index;
    return openExtractStream(index, {
      ...sources,
      imageStart: this.imageStart(target),
      concurrency: this.d.config.concurrency,
      sha256: prepared.sha256,
      acknowledged: true, // the shared assembly says which bytes every client's socket has taken
      onProgress: (p) => {
        this.account(last, p);
        last = { ...p };
        this.reportStatus(target, p);
      },
    });
  }

  /**
   * The range probe's bytes (sent with the index, see startPreparation): the image's first chunks, often missing.
   * None when the missing chunks come from a chunk store or a deltad proxy (no probe is sent).
   */
  private async imageStart(target: OriginTarget): Promise<Buffer | undefined> {
    if (!(await this.needsRangeCheck())) return undefined;
    return this.d.releases.imageStart(target.url).catch(() => undefined);
  }

  /** Adds the engine's counter increments to the daemon's metrics. */
  private account(prev: ExtractProgress | undefined, p: ExtractProgress): void {
    const c = this.d.counters;
    const reused = (x?: ExtractProgress) => (x ? x.fromSeeds + x.fromSelf + x.fromZero : 0);
    c.bytesReused += reused(p) - reused(prev);
  }

  private reportStatus(target: OriginTarget, p: ExtractProgress): void {
    const now = Date.now();
    if (now - this.lastStatus < STATUS_EVERY_MS && p.done < p.total) return;
    this.lastStatus = now;
    const pct = p.total ? Math.floor((100 * p.done) / p.total) : 100;
    this.d.notifier.status(
      `${target.name}: ${pct}% of ${formatBytes(p.total)}, reused ${formatBytes(p.fromSeeds + p.fromSelf + p.fromZero)}, downloaded ${formatBytes(p.networkBytes)}`,
    );
  }

  private watch(target: OriginTarget, prepared: DeltaImage, assembly: SharedAssembly): void {
    const { counters, log, notifier, seeds } = this.d;
    counters.assembliesStarted++;
    const started = Date.now();
    // Looked up now, so the index is kept as soon as the image is verified.
    const installedAs = seeds.installedNames(target.name);
    assembly.result.then(
      async (r) => {
        counters.assembliesCompleted++;
        const msg = `${target.name}: ${formatBytes(r.total)} assembled in ${Date.now() - started} ms (${r.mode}): reused ${formatBytes(r.fromSeeds + r.fromSelf + r.fromZero)}, downloaded ${formatBytes(r.networkBytes)} in ${r.networkRequests} requests${prepared.sha256 ? ', SHA-256 verified' : ''}`;
        log.info(msg);
        notifier.status(`idle; last: ${msg}`);
        const index = isEarly(prepared) ? (await prepared.whole)!.index : prepared.index;
        await seeds
          .remember(target.name, index, installedAs)
          .catch((err) => log.warn(`cannot keep the index of ${target.name}: ${(err as Error).message}`));
      },
      (err: Error) => {
        if (assembly.cancelled)
          return void log.info(
            `${target.name}: assembly cancelled after ${formatBytes(assembly.written)}: every client disconnected`,
          );
        counters.assemblyFailures++;
        log.error(`${target.name}: assembly failed after ${formatBytes(assembly.written)}: ${err.message}`);
      },
    );
  }

  /**
   * Sends everything a delta of `target` asks the origin before its first byte, all at once, none waiting for
   * another (each shared while fresh, lib/delta/release.ts): SHA256SUMS, the index, the HEAD, and for a delta
   * (`delta`: a GET, not a HEAD), unless the origin is a deltad proxy, the range probe and the block index probe.
   * `ready`: the prepared image once the range probe passed too. `head` gives the length for the headers when the index is slow, and
   * carries the release's kill switch (X-KDE-Delta: false).
   */
  private startPreparation(target: OriginTarget, delta: boolean) {
    const { releases } = this.d;
    // In this order, the index last: on one connection over a slow link, an answer queues behind whatever the origin
    // wrote before it, and the index body is the one large answer (341 KB for a 601 MB image, 2.9 MB for 4.6 GB).
    const sha256 = this.expectedSha256(target);
    const head = releases.head(target.url);
    // The range probe goes out before the origin is known not to be a deltad proxy (a first request of a daemon
    // asks that first): waiting for that answer would put the probe behind the index.
    const probe = delta && !this.d.config.store && this.proxyProbe?.at !== Infinity;
    const imageStart = probe ? releases.imageStart(target.url) : undefined;
    imageStart?.catch(() => {});
    const rangesOk = (delta ? this.needsRangeCheck() : Promise.resolve(false)).then((needed) =>
      needed ? (imageStart ?? releases.imageStart(target.url)).then(() => undefined) : undefined,
    );
    if (delta)
      void this.proxyStore().then((proxy) => (proxy ? undefined : releases.blockIndex(target.url).catch(() => {})));
    const ready = this.prepare(target, sha256).then(async (p) => {
      if (p) await rangesOk;
      return p;
    });
    const early = delta ? this.earlyImage(target, { sha256, ready, head, rangesOk }) : Promise.resolve(undefined);
    // A failure surfaces through the deadline race in serveImage (or not at all); never as an unhandled rejection.
    sha256.catch(() => {});
    rangesOk.catch(() => {});
    ready.catch(() => {});
    return { sha256, ready, head, early };
  }

  /**
   * The delta from the start of the index, once its first chunks are parsed while the rest downloads (a 4 GiB
   * image's index is ~4 MB, seconds on a slow link: the first byte does not wait for it), SHA256SUMS has answered,
   * the HEAD has given the length and the range probe has passed. Undefined when the whole index comes first, or
   * the missing chunks come from a chunk store or a deltad proxy (the engine would need the whole index to choose).
   */
  private async earlyImage(
    target: OriginTarget,
    p: {
      sha256: Promise<string | undefined>;
      ready: Promise<PreparedImage | undefined>;
      head: Promise<{ length?: number; deltaOff?: string }>;
      rangesOk: Promise<void>;
    },
  ): Promise<EarlyImage | undefined> {
    try {
      if (!(await this.needsRangeCheck())) return undefined;
      const h = await p.head;
      if (h.length === undefined || h.deltaOff) return undefined;
      const first = await this.d.releases.indexHead(this.release(target), arrivingHeadBytes(h.length), p.ready);
      if (!first || first.size > h.length) return undefined;
      const [sha256] = await Promise.all([p.sha256, p.rangesOk]);
      return { head: first, size: h.length, sha256, key: earlyKey(target, h.length, sha256), whole: p.ready };
    } catch {
      return undefined; // the preparation's own failure is what serveImage reports
    }
  }

  /** Byte ranges of the image are the only remote source unless a chunk store is configured or the origin is a deltad proxy. */
  private async needsRangeCheck(): Promise<boolean> {
    return !this.d.config.store && !(await this.proxyStore());
  }
}

/** The index-name template that answered last (cache directory), asked first by the next daemon run. */
const INDEX_NAME_FILE = 'index-name';

/** The kept template when it is still one of the configured ones, else undefined (configured order). */
function keptIndexTemplate(config: DaemonConfig): string | undefined {
  let kept: string;
  try {
    kept = readFileSync(join(config.cacheDir, INDEX_NAME_FILE), 'utf8').trim();
  } catch {
    return undefined;
  }
  return config.indexNames.includes(kept) ? kept : undefined;
}

function imageHeaders(size: number) {
  return { 'content-type': 'application/octet-stream', 'content-length': String(size), 'cache-control': 'no-store' };
}

function sendHeaders(res: ServerResponse, size: number): void {
  res.writeHead(200, imageHeaders(size));
  // Node holds headers back until the first body byte; sysupdate should see them now.
  res.flushHeaders();
}

class DeadlineError extends Error {}

/** The assembly key of a delta begun from the start of the index: the image as known before the whole index. */
const earlyKey = (target: OriginTarget, size: number, sha256: string | undefined): string =>
  `${target.url}#arriving#${size}#${sha256 ?? ''}`;

/** The prepared image, or the early one when it comes first (and is not undefined). */
function firstOf(ready: Promise<PreparedImage | undefined>, early: Promise<EarlyImage | undefined>) {
  return new Promise<DeltaImage | undefined>((resolve, reject) => {
    ready.then(resolve, reject);
    void early.then((e) => e && resolve(e));
  });
}

/** The whole index of an early image, which must still be the image the stream began (same SHA-256 entry). */
async function wholeIndex(target: OriginTarget, early: EarlyImage): Promise<ChunkIndex> {
  const p = await early.whole;
  if (!p) throw new OriginError(`${target.relPath}: its index is no longer on the origin`);
  if (p.sha256 !== early.sha256)
    throw new OriginError(`${target.relPath}: its SHA256SUMS entry changed during the update`);
  return p.index;
}

type LateAnswer =
  | { kind: 'prepared'; prepared: PreparedImage | undefined }
  | { kind: 'length'; length: number }
  | { kind: 'none'; why?: string };

/**
 * After the index deadline: the prepared index or the image's length from the HEAD, whichever comes first; `why`
 * when the index failed, or neither arrived by `by` (then `why` is undefined).
 */
function lateAnswer(
  ready: Promise<PreparedImage | undefined>,
  head: Promise<{ length?: number }>,
  by: number,
): Promise<LateAnswer> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ kind: 'none' }), Math.max(0, by - Date.now()));
    const settle = (a: LateAnswer) => {
      clearTimeout(timer);
      resolve(a);
    };
    ready.then(
      (prepared) => settle({ kind: 'prepared', prepared }),
      (err: Error) => settle({ kind: 'none', why: err.message }),
    );
    // A HEAD without a length leaves it to the index.
    void head.then((h) => h.length !== undefined && settle({ kind: 'length', length: h.length }));
  });
}

/** Races `p` against a timer (rejecting with a DeadlineError); the timer never outlives the race. */
async function withDeadline<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError(message)), Math.max(0, ms));
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

type FirstByte = 'ready' | 'failed' | 'timeout';

async function firstByteWithin(assembly: SharedAssembly, ms: number): Promise<FirstByte> {
  const first = assembly.firstByte().then(
    () => 'ready' as const,
    () => 'failed' as const,
  );
  return withDeadline(first, ms, 'timeout').catch(() => 'timeout' as const);
}
