// Every `deltad` command, in the order `deltad --help` lists them. Modules load
// only when their command runs: `deltad extract` never pays for fastify.
import type { Command } from '../command.js';

export interface CommandEntry {
  name: string;
  /** One line for `deltad --help`. */
  summary: string;
  load(): Promise<Command>;
}

export const commands: CommandEntry[] = [
  {
    name: 'make',
    summary: 'chunk a file into a casync index (.caibx), optionally filling a store',
    load: async () => (await import('./make.js')).command,
  },
  {
    name: 'chop',
    summary: 'store the chunks of a file in a casync chunk store',
    load: async () => (await import('./chop.js')).command,
  },
  {
    name: 'info',
    summary: 'show what an index (.caibx/.caidx) holds',
    load: async () => (await import('./info.js')).command,
  },
  {
    name: 'verify',
    summary: 'check a file or a chunk store against an index',
    load: async () => (await import('./verify.js')).command,
  },
  {
    name: 'plan',
    summary: 'show how much of an update comes from seeds and the network',
    load: async () => (await import('./plan.js')).command,
  },
  {
    name: 'extract',
    summary: 'assemble an image from seeds and the network (delta download)',
    load: async () => (await import('./extract.js')).command,
  },
  {
    name: 'publish',
    summary: 'write everything a release needs beside its image (index, block pack, optional store)',
    load: async () => (await import('./publish.js')).command,
  },
  {
    name: 'pack',
    summary: 'write the block pack, dictionary and block index of a release image',
    load: async () => (await import('./pack.js')).command,
  },
  {
    name: 'serve',
    summary: 'run the sysupdate sidecar daemon (socket-activated or --listen)',
    load: async () => (await import('./serve.js')).command,
  },
  {
    name: 'redirect',
    summary: 'route systemd-sysupdate transfers through the daemon (drop-in in /run/sysupdate.d)',
    load: async () => (await import('./redirect.js')).command,
  },
  {
    name: 'proxy',
    summary: 'run the fleet caching proxy (one upstream, a shared chunk cache, casync store and batch endpoint)',
    load: async () => (await import('./proxy.js')).command,
  },
  {
    name: 'demo',
    summary: 'show a delta update end to end on this machine (nothing to configure)',
    load: async () => (await import('./demo.js')).command,
  },
];
