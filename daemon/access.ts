// Who may use the fleet proxy, and how much at once. The proxy listens beyond
// loopback, so clients are checked against an allow-list of networks (default:
// loopback and private ranges), each client address gets a cap on concurrent
// requests, and request targets that could make it talk to another host
// (absolute-form targets, odd Host headers) are refused before routing.
import { BlockList, isIP } from 'node:net';

/** Loopback, RFC 1918 private, unique-local and link-local networks. */
export const DEFAULT_ALLOW = [
  '127.0.0.0/8',
  '::1/128',
  '10.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  'fc00::/7',
  'fe80::/10',
];

export class AllowList {
  private readonly list = new BlockList();
  readonly networks: readonly string[];

  constructor(networks: readonly string[]) {
    this.networks = networks;
    for (const net of networks) {
      const [addr, bits, extra] = net.split('/');
      const family = isIP(addr);
      const max = family === 6 ? 128 : 32;
      const prefix = bits === undefined ? max : Number(bits);
      if (!family || extra !== undefined || !/^\d{1,3}$/.test(bits ?? String(max)) || prefix > max) {
        throw new Error(`"${net}" is not a network: expected ADDRESS/PREFIX like 10.0.0.0/8 or fc00::/7`);
      }
      this.list.addSubnet(addr, prefix, family === 6 ? 'ipv6' : 'ipv4');
    }
  }

  /** Whether a client address (as Node reports it, IPv4-mapped IPv6 included) is allowed. */
  allows(address: string | undefined): boolean {
    if (!address) return false;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    const addr = mapped ? mapped[1] : address.replace(/%.*$/, ''); // drop an IPv6 zone id
    const family = isIP(addr);
    if (!family) return false;
    return this.list.check(addr, family === 6 ? 'ipv6' : 'ipv4');
  }
}

/** Counts in-flight requests per client address; refuses the one over the cap. */
export class ClientLimiter {
  private readonly active = new Map<string, number>();
  constructor(readonly maxPerClient: number) {}

  /** Returns a release function, or null when the client is at its cap. */
  acquire(client: string): (() => void) | null {
    const n = this.active.get(client) ?? 0;
    if (n >= this.maxPerClient) return null;
    this.active.set(client, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.active.get(client) ?? 1) - 1;
      if (left <= 0) this.active.delete(client);
      else this.active.set(client, left);
    };
  }
}

const HOST_HEADER =
  /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})?)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

/**
 * Why a request's target is refused, or null when it is a plain origin-form
 * request. The upstream comes only from configuration; this stops requests
 * that look like forward-proxy use or carry a Host header no client would send.
 */
export function refuseTarget(method: string, rawUrl: string, rawHeaders: readonly string[]): string | null {
  if (method === 'CONNECT') return 'CONNECT is not supported: this is not a forward proxy';
  if (!rawUrl.startsWith('/'))
    return 'absolute-form request targets are refused: this proxy only serves its configured upstream';
  if (rawUrl.startsWith('//')) return 'request target starts with "//"';
  // Node keeps only the first of several Host headers in req.headers: count them in the raw [name, value, ...] list.
  const hosts: string[] = [];
  for (let k = 0; k < rawHeaders.length; k += 2)
    if (rawHeaders[k].toLowerCase() === 'host') hosts.push(rawHeaders[k + 1]);
  if (hosts.length > 1) return 'more than one Host header';
  if (hosts.length === 1 && !HOST_HEADER.test(hosts[0])) return 'malformed Host header';
  return null;
}
