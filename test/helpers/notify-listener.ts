// A real sd_notify receiver for tests: an AF_UNIX datagram socket bound by a
// python3 child (Node's dgram cannot bind AF_UNIX), collecting every message.
import { spawn } from 'node:child_process';

export interface NotifyListener {
  path: string;
  /** Messages received so far (systemd-notify's BARRIER=1 left out). */
  messages(): string[];
  close(): void;
}

const SCRIPT = `
import socket, sys, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
s.settimeout(30)
while True:
    try:
        d = s.recv(65536)
    except socket.timeout:
        break
    print(json.dumps(d.decode()), flush=True)
`;

export async function startNotifyListener(path: string): Promise<NotifyListener> {
  const child = spawn('python3', ['-c', SCRIPT, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const deadline = Date.now() + 10_000;
  while (!out.includes('bound')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error('notify listener did not start');
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    path,
    messages: () =>
      out
        .split('\n')
        .slice(1)
        .filter(Boolean)
        .map((l) => JSON.parse(l) as string)
        .filter((m) => m !== 'BARRIER=1'),
    close: () => void child.kill(),
  };
}
