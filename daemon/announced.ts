// What a SHA256SUMS passing through the sidecar announces. systemd-sysupdate
// fetches the manifest (through deltad) just before it asks for the newest
// image the manifest lists, so the daemon starts that image's preparation
// (index, SHA256SUMS entry, HEAD, range and block index probes; one shared
// preparation, lib/delta/release.ts) as the manifest passes: the image request
// finds it done or under way. Bounded: only names the image patterns accept;
// per sysupdate transfer (without transfers: of all of them) only the newest
// version, as sysupdate would choose; none installed already (a seed of that
// name or of the name sysupdate installs it as); at most MAX_ANNOUNCED. A
// preparation that no request uses (systemd-sysupdate check-new) costs its
// index download and ages out with the release's other answers (freshness, at
// most 64 kept). It starts at the manifest, not later: check-new and update
// send the same requests until the image request (docs/CONFIG.md).
import { basename } from 'node:path';
import { listedNames } from '../lib/format/sha256sums.js';
import { resolveOriginTarget, type OriginTarget } from './origin-path.js';
import { withQuery } from './passthrough.js';
import type { DaemonContext } from './sidecar-context.js';
import { compareVersions, type TransferNames } from './sysupdate-names.js';

/** Images prepared ahead per manifest at most. */
export const MAX_ANNOUNCED = 4;

/** The manifest's name, as sysupdate fetches it beside the images. */
export const MANIFEST_NAME = 'SHA256SUMS';

/**
 * The names among a manifest's `names` that sysupdate would download next (see above): for each transfer the
 * newest version its source patterns match; without transfers the newest name the image patterns accept.
 */
export function announcedImages(
  names: readonly string[],
  isImage: (name: string) => boolean,
  transfers: TransferNames,
  installed: ReadonlySet<string>,
): string[] {
  const newest = new Map<number, { name: string; version: string }>();
  for (const name of names) {
    if (name.includes('/') || !isImage(name)) continue;
    const v = transfers.versionOf(name);
    // With transfers, a name none of them matches is not downloaded by sysupdate.
    if (transfers.count > 0 && !v) continue;
    const series = v?.transfer ?? -1;
    const version = v?.version ?? name;
    const best = newest.get(series);
    if (!best || compareVersions(version, best.version) > 0) newest.set(series, { name, version });
  }
  const isInstalled = (name: string) =>
    installed.has(name) || transfers.installedNames(name).some((n) => installed.has(n));
  return [...newest.values()]
    .map((x) => x.name)
    .filter((name) => !isInstalled(name))
    .slice(0, MAX_ANNOUNCED);
}

/**
 * Starts preparing the images that the manifest `sums` (passing through) announces; resolves with their names.
 * The manifest is read through the release preparation's own copy, which the images' SHA-256 lookups share.
 */
export async function prepareAnnounced(ctx: DaemonContext, sums: OriginTarget): Promise<string[]> {
  // The manifest the client asked for, its query (a signed URL's token, a cache buster) kept; the origin is the
  // configured one (sums.url), never the request's.
  const file = await ctx.releases.file(withQuery(sums.url, sums.search));
  if (file.status !== 200) return [];
  const installed = new Set((await ctx.seeds.scan()).map((p) => basename(p)));
  const transfers = await ctx.transfers.current();
  const names = announcedImages(listedNames(file.body.toString('utf8')), ctx.isImage, transfers, installed);
  const dir = sums.relPath.split('/').slice(0, -1);
  for (const name of names) {
    let target: OriginTarget;
    try {
      target = resolveOriginTarget(ctx.origin, `/${[...dir, name].map(encodeURIComponent).join('/')}`);
    } catch {
      continue; // a name no request could ask for (e.g. "..")
    }
    ctx.log.info(`${target.relPath}: ${MANIFEST_NAME} lists it; preparing it ahead of its request`);
    ctx.images.prepareAhead(target);
  }
  return names;
}
