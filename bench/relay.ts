// A TCP relay that shapes every connection through it as one shared link, for
// benchmarks of real link conditions on 127.0.0.1: one rate per direction for
// all connections together (a token bucket with round-robin between the
// connections that have data, like a bottleneck link that the flows share;
// not per connection like nginx's limit_rate) and a round-trip delay, half
// each way, applied as a timed queue behind the rate limiter, so a full link
// still moves `rate` bytes per second whatever the delay. A new connection
// waits one round trip before its first byte leaves (the TCP handshake).
// Not modelled: TCP slow start and loss (both sides of the relay are loopback).
//
// Library: startRelay({ listen, to, shape }) → { port, stats(), close() }, or a
// shared Link for several relays (zsync over http and curl over https on one
// link). CLI:
//   node dist/bench/relay.js --listen 127.0.0.1:PORT --to 127.0.0.1:PORT --rate 100mbit --rtt 40ms
//   node dist/bench/relay.js --self-check --rate 5mbit --rtt 40ms
// The CLI measures the rate and RTT it produces first (--no-self-check skips it).
import net from 'node:net';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

export interface LinkShape {
  /** Bits per second in each direction, shared by all connections; 0 = unlimited. */
  rateBitsPerS: number;
  /** Round-trip delay in ms (half in each direction). */
  rttMs: number;
}

/** "100mbit", "5Mbit", "800kbit", "1gbit", "12500kB" (bytes), "0"/"none" (unlimited) → bits per second. */
export function parseRate(s: string): number {
  if (/^(0|none|unlimited|inf)$/i.test(s.trim())) return 0;
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG])?(bit|Bit|bps|b|B)?$/.exec(s.trim());
  if (!m) throw new Error(`rate "${s}": expected e.g. 100mbit, 5mbit, 12500kB or none`);
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[(m[2] ?? '').toLowerCase() as '' | 'k' | 'm' | 'g'];
  const bytes = m[3] === 'B';
  return Number(m[1]) * mult * (bytes ? 8 : 1);
}

/** "40ms", "0.1s", "40", "0" → milliseconds. */
export function parseDuration(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s)?$/.exec(s.trim());
  if (!m) throw new Error(`duration "${s}": expected e.g. 40ms or 0.1s`);
  return Number(m[1]) * (m[2] === 's' ? 1000 : 1);
}

export function describeShape(s: LinkShape): string {
  const rate = s.rateBitsPerS === 0 ? 'unlimited' : `${s.rateBitsPerS / 1e6} Mbit/s`;
  return `${rate}, RTT ${s.rttMs} ms`;
}

const QUANTUM = 16 * 1024; // bytes a flow sends per round-robin turn
const SRC_HIGH = 256 * 1024; // a flow's queued bytes above which its source is paused
const DST_HIGH = 1024 * 1024; // receiver's unread bytes above which a flow stops being served

const now = (): number => performance.now();

/** One TCP connection's bytes in one direction. */
class Flow {
  readonly queue: Buffer[] = [];
  queued = 0;
  /** Source ended: after the queue drains an end marker goes through the delay line. */
  ended = false;
  endSent = false;
  blocked = false;
  constructor(
    readonly src: net.Socket,
    readonly dst: net.Socket,
  ) {}
}

interface InFlight {
  flow: Flow;
  buf: Buffer | null; // null = end of stream
  at: number;
}

/** One direction of the link: fair-queued token bucket, then a fixed delay. */
class Direction {
  bytes = 0;
  private readonly rate: number; // bytes per ms, 0 = unlimited
  private readonly delay: number;
  private readonly burst: number;
  private tokens: number;
  /** Data was waiting when the pacer last stopped: a late timer's time is owed in full. */
  private backlogged = false;
  private refilled = now();
  private flows: Flow[] = [];
  private next = 0;
  private pumpTimer: NodeJS.Timeout | null = null;
  private readonly line: InFlight[] = [];
  private lineHead = 0;
  private lineTimer: NodeJS.Timeout | null = null;

  constructor(rateBitsPerS: number, delayMs: number) {
    this.rate = rateBitsPerS / 8 / 1000;
    this.delay = delayMs;
    this.burst = Math.max(32 * 1024, this.rate * 5);
    this.tokens = this.burst;
  }

  add(flow: Flow): void {
    this.flows.push(flow);
  }

  remove(flow: Flow): void {
    this.flows = this.flows.filter((f) => f !== flow);
  }

  push(flow: Flow, buf: Buffer): void {
    flow.queue.push(buf);
    flow.queued += buf.length;
    if (flow.queued > SRC_HIGH) flow.src.pause();
    this.pump();
  }

  end(flow: Flow): void {
    flow.ended = true;
    this.pump();
  }

  /** Moves queued bytes onto the delay line as fast as the tokens allow, one quantum per flow per turn. */
  pump(): void {
    if (this.pumpTimer) return;
    if (this.rate > 0) {
      // An idle link saves up at most `burst`; a busy one is paid for every ms its timer fired late
      // (up to 100 ms), so the long-run rate holds on a loaded machine.
      const t = now();
      const cap = this.backlogged ? Math.max(this.burst, this.rate * 100) : this.burst;
      this.tokens = Math.min(cap, this.tokens + (t - this.refilled) * this.rate);
      this.refilled = t;
      this.backlogged = false;
    }
    let idle = 0;
    while (this.flows.length && idle < this.flows.length) {
      if (this.rate > 0 && this.tokens <= 0) {
        this.backlogged = true;
        this.pumpTimer = setTimeout(
          () => {
            this.pumpTimer = null;
            this.pump();
          },
          Math.max(1, -this.tokens / this.rate),
        );
        return;
      }
      const flow = this.flows[this.next % this.flows.length];
      this.next = (this.next + 1) % this.flows.length;
      if (flow.blocked || (flow.queued === 0 && (!flow.ended || flow.endSent))) {
        idle++;
        continue;
      }
      idle = 0;
      if (flow.queued === 0) {
        flow.endSent = true;
        this.send(flow, null);
        continue;
      }
      const buf = this.take(flow, QUANTUM);
      if (this.rate > 0) this.tokens -= buf.length;
      this.bytes += buf.length;
      this.send(flow, buf);
    }
  }

  private take(flow: Flow, max: number): Buffer {
    const head = flow.queue[0];
    let buf: Buffer;
    if (head.length <= max) {
      flow.queue.shift();
      buf = head;
    } else {
      buf = head.subarray(0, max);
      flow.queue[0] = head.subarray(max);
    }
    flow.queued -= buf.length;
    if (flow.queued <= SRC_HIGH / 2 && flow.src.isPaused() && !flow.src.destroyed) flow.src.resume();
    return buf;
  }

  private send(flow: Flow, buf: Buffer | null): void {
    if (this.delay === 0 && this.lineHead === this.line.length) {
      this.deliver(flow, buf);
      return;
    }
    this.line.push({ flow, buf, at: now() + this.delay });
    this.armLine();
  }

  private armLine(): void {
    if (this.lineTimer || this.lineHead === this.line.length) return;
    const wait = Math.max(0, this.line[this.lineHead].at - now());
    this.lineTimer = setTimeout(() => {
      this.lineTimer = null;
      const t = now() + 0.5;
      while (this.lineHead < this.line.length && this.line[this.lineHead].at <= t) {
        const { flow, buf } = this.line[this.lineHead++];
        this.deliver(flow, buf);
      }
      if (this.lineHead > 4096 && this.lineHead * 2 > this.line.length) {
        this.line.splice(0, this.lineHead);
        this.lineHead = 0;
      }
      this.armLine();
    }, wait);
  }

  private deliver(flow: Flow, buf: Buffer | null): void {
    if (flow.dst.destroyed) return;
    if (buf === null) {
      flow.dst.end();
      return;
    }
    flow.dst.write(buf);
    if (flow.dst.writableLength > DST_HIGH && !flow.blocked) {
      flow.blocked = true;
      flow.dst.once('drain', () => {
        flow.blocked = false;
        this.pump();
      });
    }
  }
}

export interface LinkStats {
  /** Bytes client → server and server → client. */
  up: number;
  down: number;
  connections: number;
  maxConcurrent: number;
}

/** The shared link: one Direction each way; several relays may share one Link. */
export class Link {
  readonly up: Direction;
  readonly down: Direction;
  connections = 0;
  open = 0;
  maxConcurrent = 0;
  constructor(readonly shape: LinkShape) {
    this.up = new Direction(shape.rateBitsPerS, shape.rttMs / 2);
    this.down = new Direction(shape.rateBitsPerS, shape.rttMs / 2);
  }
  stats(): LinkStats {
    return {
      up: this.up.bytes,
      down: this.down.bytes,
      connections: this.connections,
      maxConcurrent: this.maxConcurrent,
    };
  }
}

export interface Relay {
  host: string;
  port: number;
  link: Link;
  stats(): LinkStats;
  close(): Promise<void>;
}

export interface RelayOptions {
  /** Where to listen (default 127.0.0.1, port 0). */
  listen?: { host?: string; port?: number };
  to: { host: string; port: number };
  /** A shape (a new link) or a link shared with other relays. */
  shape: LinkShape | Link;
}

function relayConnection(link: Link, client: net.Socket, to: RelayOptions['to'], sockets: Set<net.Socket>): void {
  link.connections++;
  link.maxConcurrent = Math.max(link.maxConcurrent, ++link.open);
  client.pause();
  const server = net.connect({ host: to.host, port: to.port, allowHalfOpen: true });
  sockets.add(server);
  server.pause();
  const up = new Flow(client, server);
  const down = new Flow(server, client);
  let closed = 0;
  let started = false;
  // A reset on either side ends both at once (no half-delivered tail to flush).
  const abort = (): void => {
    client.destroy();
    server.destroy();
  };
  // A side that closes without a clean end (destroyed) still ends the other side, after what is in flight.
  const onClose = (dir: Direction, flow: Flow, socket: net.Socket): void => {
    sockets.delete(socket);
    if (started && !flow.ended) dir.end(flow);
    else if (!started) abort();
    if (++closed < 2) return;
    link.up.remove(up);
    link.down.remove(down);
    link.open--;
  };
  client.on('error', abort).on('close', () => onClose(link.up, up, client));
  server.on('error', abort).on('close', () => onClose(link.down, down, server));
  let connected = false;
  let handshakeDone = link.shape.rttMs === 0;
  const start = (): void => {
    if (!connected || !handshakeDone || client.destroyed) return;
    started = true;
    link.up.add(up);
    link.down.add(down);
    client.on('data', (b: Buffer) => link.up.push(up, b)).on('end', () => link.up.end(up));
    server.on('data', (b: Buffer) => link.down.push(down, b)).on('end', () => link.down.end(down));
    client.resume();
    server.resume();
  };
  server.once('connect', () => {
    connected = true;
    start();
  });
  if (!handshakeDone) {
    setTimeout(() => {
      handshakeDone = true;
      start();
    }, link.shape.rttMs);
  }
}

export function startRelay(opts: RelayOptions): Promise<Relay> {
  const link = opts.shape instanceof Link ? opts.shape : new Link(opts.shape);
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    sockets.add(client);
    relayConnection(link, client, opts.to, sockets);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.listen?.port ?? 0, opts.listen?.host ?? '127.0.0.1', () => {
      const addr = server.address() as net.AddressInfo;
      resolve({
        host: addr.address,
        port: addr.port,
        link,
        stats: () => link.stats(),
        close: () =>
          new Promise<void>((done) => {
            for (const s of sockets) s.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

// --- self-check: what the relay really produces ----------------------------------

export interface SelfCheck {
  shape: LinkShape;
  /** Median request/response time of a 1-byte ping on an open connection. */
  rttMs: number;
  /** Connect to first ping answer (expected two round trips: handshake + ping). */
  connectMs: number;
  /** Aggregate rate of 4 concurrent downloads, and of 4 concurrent uploads, in bits per second. */
  downBitsPerS: number;
  upBitsPerS: number;
  /** Slowest / fastest of the 4 concurrent downloads' times (1.0 = perfectly fair). */
  downSpread: number;
}

/**
 * A test server behind a relay with `shape`: pings, then 4 parallel downloads
 * and 4 parallel uploads of about `seconds` of the link's rate each (64 MiB
 * total when unlimited).
 */
export async function selfCheck(shape: LinkShape, seconds = 1.5): Promise<SelfCheck> {
  // Protocol: 'p' → 'p'; 'd' + u32 n → n bytes; 'u' + u32 n + n bytes → 'k'.
  const sink = net.createServer((s) => {
    let buf = Buffer.alloc(0);
    let uploading = 0;
    s.on('data', (d: Buffer) => {
      if (uploading > 0) {
        uploading -= d.length;
        if (uploading <= 0) s.write('k');
        return;
      }
      buf = Buffer.concat([buf, d]);
      while (buf.length) {
        const op = String.fromCharCode(buf[0]);
        if (op === 'p') {
          s.write('p');
          buf = buf.subarray(1);
        } else if (buf.length >= 5) {
          const n = buf.readUInt32BE(1);
          const rest = buf.subarray(5);
          buf = Buffer.alloc(0);
          if (op === 'd') s.write(Buffer.alloc(n, 7));
          else {
            uploading = n - rest.length;
            if (uploading <= 0) s.write('k');
          }
        } else return;
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  const relay = await startRelay({ to: { host: '127.0.0.1', port: (sink.address() as net.AddressInfo).port }, shape });
  const connect = (): Promise<net.Socket> =>
    new Promise((resolve, reject) => {
      const c = net.connect(relay.port, '127.0.0.1', () => resolve(c));
      c.once('error', reject);
    });
  const until = (c: net.Socket, bytes: number): Promise<void> =>
    new Promise((resolve) => {
      let got = 0;
      const on = (d: Buffer): void => {
        got += d.length;
        if (got >= bytes) {
          c.off('data', on);
          resolve();
        }
      };
      c.on('data', on);
    });
  try {
    (await connect()).destroy(); // warm up (first use of the socket code costs ~20 ms)
    const t0 = now();
    const c = await connect();
    c.write('p');
    await until(c, 1);
    const connectMs = now() - t0;
    const pings: number[] = [];
    for (let i = 0; i < 7; i++) {
      const t = now();
      c.write('p');
      await until(c, 1);
      pings.push(now() - t);
    }
    pings.sort((a, b) => a - b);
    const rateBytes = shape.rateBitsPerS / 8;
    const each = Math.round(rateBytes ? (rateBytes * seconds) / 4 : 16 * 1024 * 1024);
    const conns = await Promise.all([0, 1, 2, 3].map(() => connect()));
    // Warm each connection's handshake first, so the transfer measures the rate.
    await Promise.all(
      conns.map((k) => {
        k.write('p');
        return until(k, 1);
      }),
    );
    const header = (op: string): Buffer => {
      const h = Buffer.alloc(5);
      h.write(op, 0);
      h.writeUInt32BE(each, 1);
      return h;
    };
    let t = now();
    const times = await Promise.all(
      conns.map(async (k) => {
        k.write(header('d'));
        await until(k, each);
        return now() - t;
      }),
    );
    const downS = (Math.max(...times) - shape.rttMs) / 1000;
    t = now();
    await Promise.all(
      conns.map(async (k) => {
        k.write(Buffer.concat([header('u'), Buffer.alloc(each, 3)]));
        await until(k, 1);
      }),
    );
    const upS = (now() - t - shape.rttMs) / 1000;
    for (const k of [c, ...conns]) k.destroy();
    return {
      shape,
      rttMs: pings[pings.length >> 1],
      connectMs,
      downBitsPerS: (4 * each * 8) / downS,
      upBitsPerS: (4 * each * 8) / upS,
      downSpread: Math.max(...times) / Math.min(...times),
    };
  } finally {
    await relay.close();
    await new Promise<void>((r) => sink.close(() => r()));
  }
}

export function describeCheck(c: SelfCheck): string {
  const mbit = (b: number): string => (b / 1e6).toFixed(b < 1e7 ? 2 : 1);
  return (
    `relay self-check (${describeShape(c.shape)}): RTT ${c.rttMs.toFixed(1)} ms, connect + first answer ` +
    `${c.connectMs.toFixed(1)} ms, 4 connections together: down ${mbit(c.downBitsPerS)} Mbit/s, ` +
    `up ${mbit(c.upBitsPerS)} Mbit/s, slowest/fastest download ${c.downSpread.toFixed(2)}`
  );
}

function hostPort(s: string, what: string): { host: string; port: number } {
  const m = /^(.+):(\d+)$/.exec(s);
  if (!m) throw new Error(`${what} "${s}": expected HOST:PORT`);
  return { host: m[1], port: Number(m[2]) };
}

async function cli(): Promise<void> {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string' },
      to: { type: 'string' },
      rate: { type: 'string', default: 'none' },
      rtt: { type: 'string', default: '0' },
      'self-check': { type: 'boolean', default: false },
      'no-self-check': { type: 'boolean', default: false },
    },
  });
  const shape: LinkShape = { rateBitsPerS: parseRate(values.rate!), rttMs: parseDuration(values.rtt!) };
  if (values['self-check'] || !values['no-self-check']) console.log(describeCheck(await selfCheck(shape)));
  if (!values.listen || !values.to) {
    if (!values['self-check']) {
      throw new Error('usage: relay.js --listen HOST:PORT --to HOST:PORT [--rate 100mbit] [--rtt 40ms] | --self-check');
    }
    return;
  }
  const listen = hostPort(values.listen, '--listen');
  const relay = await startRelay({ listen, to: hostPort(values.to, '--to'), shape });
  console.log(
    `relay ${relay.host}:${relay.port} → ${values.to} (${describeShape(shape)}); ` + 'Ctrl-C prints totals and stops',
  );
  const stop = async (): Promise<void> => {
    console.log(JSON.stringify(relay.stats()));
    await relay.close();
    process.exit(0);
  };
  process.once('SIGINT', stop).once('SIGTERM', stop);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  cli().catch((err) => {
    console.error(`relay: ${(err as Error).message}`);
    process.exit(2);
  });
}
