// systemd socket activation (sd_listen_fds): the sockets systemd passes start
// at fd 3; LISTEN_PID must be ours (else they were meant for another process).
// The variables are removed so that child processes do not inherit them.

export const SD_LISTEN_FDS_START = 3;

export interface InheritedSocket {
  fd: number;
  /** From LISTEN_FDNAMES (FileDescriptorName= in the .socket unit), or "unknown". */
  name: string;
}

export function takeInheritedSockets(
  env: NodeJS.ProcessEnv = process.env,
  pid: number = process.pid,
): InheritedSocket[] {
  const count = Number(env.LISTEN_FDS ?? 0);
  const forUs = env.LISTEN_PID !== undefined && Number(env.LISTEN_PID) === pid;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  if (!forUs || !Number.isInteger(count) || count <= 0) return [];
  return Array.from({ length: count }, (_, i) => ({ fd: SD_LISTEN_FDS_START + i, name: names[i] || 'unknown' }));
}

/** The socket to serve HTTP on: the one named "http", else the first. */
export function pickHttpSocket(sockets: InheritedSocket[]): InheritedSocket | undefined {
  return sockets.find((s) => s.name === 'http') ?? sockets[0];
}
