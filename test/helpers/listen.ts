// A plain node:http server of a test on 127.0.0.1 (port 0), closed with its connections when the test ends.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Starts `server` on 127.0.0.1 and returns its base URL; `t.after` closes it, open connections included. */
export async function listenLocal(t: { after(fn: () => Promise<void>): void }, server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}
