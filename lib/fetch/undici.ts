// The parts of undici that deltad uses, loaded one by one. The package's index
// also loads fetch, WebSocket, EventSource, the cache and cookie APIs and the
// mock agents, none of which deltad uses: about 16 MiB of resident memory at
// start-up in every command (bench/RESULTS.md, "Memory (session 3)"). The
// types still come from the package (type-only imports load nothing).
import { createRequire } from 'node:module';
import type * as Undici from 'undici';
import type { Dispatcher } from 'undici';

const require = createRequire(import.meta.url);

export const Agent: typeof Undici.Agent = require('undici/lib/dispatcher/agent.js');
export const DecoratorHandler: typeof Undici.DecoratorHandler = require('undici/lib/handler/decorator-handler.js');
export const buildConnector: typeof Undici.buildConnector = require('undici/lib/core/connect.js');
const apiRequest: (
  this: Dispatcher,
  opts: Dispatcher.RequestOptions,
) => Promise<Dispatcher.ResponseData> = require('undici/lib/api/api-request.js');

export type RequestOptions = Omit<Dispatcher.RequestOptions, 'origin' | 'path'> & { dispatcher: Dispatcher };

/** undici's `request(url, opts)` on the given dispatcher (the index's version of it also defaults one). */
export function request(url: string, opts: RequestOptions): Promise<Dispatcher.ResponseData> {
  const u = new URL(url);
  const { dispatcher, ...rest } = opts;
  return apiRequest.call(dispatcher, { ...rest, origin: u.origin, path: `${u.pathname}${u.search}` });
}
