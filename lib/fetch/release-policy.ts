// What a release server says about how clients may fetch it. A release can
// switch deltas off for its clients with a response header on the image, as
// KDE Linux's sysupdated reads `X-KDE-Delta: false` from its HEAD of the image:
// clients then download the full image. deltad honours that header and its
// own spelling, `X-Deltad-Delta: false`.
import type { IncomingHttpHeaders } from 'node:http';

const KILL_SWITCH_HEADERS = ['x-kde-delta', 'x-deltad-delta'];

/** The header that disables deltas ("X-KDE-Delta: false"), or undefined when deltas are allowed. */
export function deltaDisabledBy(
  headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
): string | undefined {
  for (const name of KILL_SWITCH_HEADERS) {
    const v = headers[name];
    const value = Array.isArray(v) ? v[v.length - 1] : v;
    if (typeof value === 'string' && value.trim().toLowerCase() === 'false') return `${name}: ${value.trim()}`;
  }
  return undefined;
}
