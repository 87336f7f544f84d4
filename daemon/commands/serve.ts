// `deltad serve`: the systemd-sysupdate sidecar. Listens on the socket systemd
// passes (socket activation) or on --listen, tells systemd READY and a status
// line, indexes seeds in the background, and exits after --idle-timeout
// seconds without connections, letting in-flight downloads finish. An idle
// exit stops accepting first, so no request is refused: systemd keeps the
// socket and queued connections start the next instance.
import type { Socket } from 'node:net';
import type { Command } from '../command.js';
import { configOptions, configUsage, loadConfig, splitListen } from '../config.js';
import { IdleTimer } from '../idle.js';
import { createLogger } from '../log.js';
import { createNotifier } from '../notify.js';
import { buildServer } from '../server.js';
import { pickHttpSocket, takeInheritedSockets } from '../socket-activation.js';

export const command: Command = {
  name: 'serve',
  usage: `Usage: deltad serve [config options]

Serves GET/HEAD /<path> from the origin: images (--image-pattern) with an index
on the origin are assembled from local seeds plus the missing bytes; everything
else is redirected (307) or proxied. Also: /healthz, /metrics (Prometheus),
/.deltad/plan/<path> (update size as JSON), /v1/updatesize?version=V (bytes
from the network for version V as plain text, as kde-linux-sysupdated answers).

With systemd socket activation (deltad.socket) it serves the passed socket;
otherwise it listens on --listen. Nothing listens beyond loopback by default.

Example (no configuration file needed):
  deltad serve --listen 127.0.0.1:3129 --origin https://updates.example.org/ \\
    --seed-glob '/system/*.erofs' --cache-dir /var/cache/deltad

${configUsage}`,
  options: configOptions,
  async run(ctx) {
    const config = loadConfig({ values: ctx.values });
    const log = createLogger(ctx.stderr);
    const notifier = createNotifier({ log });
    const sockets = takeInheritedSockets();
    const { app, ctx: daemon } = await buildServer(config, { log, notifier });
    const warmAbort = new AbortController();

    let closing: Promise<void> | undefined;
    const shutdown = (why: string) => {
      closing ??= (async () => {
        // Stop accepting now, synchronously: from here on a new connection waits
        // in the listening socket's backlog, which systemd keeps open, for the
        // next instance, instead of reaching a server that is shutting down
        // (fastify answers those 503). Closing our copy of the fd leaves systemd's.
        if (app.server.listening) app.server.close();
        log.info(`stopping: ${why}`);
        notifier.stopping();
        idle.stop();
        warmAbort.abort();
        await app.close();
        await notifier.flush();
      })();
      return closing;
    };
    // Idle means no open connection (not just no request: a connection whose
    // request has not been parsed yet must not meet a closing server). The timer
    // fires between event-loop turns, so no connection can slip in before the close.
    const idle = new IdleTimer(config.idleTimeout * 1000, () => void shutdown(`idle for ${config.idleTimeout} s`));
    app.server.on('connection', (socket: Socket) => {
      idle.begin();
      socket.once('close', () => idle.end());
    });

    const socket = pickHttpSocket(sockets);
    let where: string;
    if (socket) {
      // A host other than "localhost" keeps fastify from opening extra servers (Node ignores it with an fd).
      await app.listen({ fd: socket.fd, host: '127.0.0.1' } as { fd: number; host: string });
      where = `socket-activated fd ${socket.fd} (${socket.name})`;
    } else {
      const { host, port } = splitListen(config.listen);
      await app.listen({ host, port });
      const addr = app.server.address();
      where =
        typeof addr === 'object' && addr
          ? `${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`
          : config.listen;
    }
    log.info(
      `deltad serving ${where}; origin ${daemon.origin}; seeds ${config.seedGlobs.join(' ')}; cache ${config.cacheDir}`,
    );
    // Tests and scripts wait for this line to learn the port.
    ctx.stdout.write(`listening ${where}\n`);
    notifier.ready(`serving ${daemon.origin}`);

    void daemon.seeds.warm(warmAbort.signal);

    const stopped = new Promise<void>((resolve) => {
      for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void shutdown(sig).then(resolve));
      app.server.once('close', () => void (closing ?? Promise.resolve()).then(resolve));
    });
    await stopped;
    log.info('stopped');
    return 0;
  },
};
