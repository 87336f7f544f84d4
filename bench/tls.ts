// A throwaway certificate authority and server certificate for 127.0.0.1,
// made with openssl at run time, for TLS origins in benchmarks and tests.
// Clients trust it via NODE_EXTRA_CA_CERTS / --ca-file (deltad), --cacert
// (curl), or the whole system bundle swapped in a private mount namespace
// (tools without a CA option: casync, systemd-pull; see withCaBundle).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCa {
  dir: string;
  /** The CA certificate (PEM): what clients trust. */
  caCert: string;
  /** Server certificate and key for IP 127.0.0.1 and DNS localhost, signed by the CA. */
  cert: string;
  key: string;
  /** The system CA bundle plus this CA (for withCaBundle). */
  bundle: string;
}

const SYSTEM_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
}

/** Makes a CA and a server certificate (P-256, valid 2 days) in `dir`. */
export function makeTestCa(dir: string): TestCa {
  mkdirSync(dir, { recursive: true });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(
    [
      'req',
      '-x509',
      ...ec,
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
      '-days',
      '2',
      '-subj',
      '/CN=deltad bench CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  openssl(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1'], dir);
  writeFileSync(
    join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' +
      'keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n',
  );
  openssl(
    [
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'server.pem',
      '-days',
      '2',
      '-extfile',
      'server.ext',
    ],
    dir,
  );
  const bundle = join(dir, 'bundle.pem');
  let system = '';
  try {
    system = readFileSync(SYSTEM_BUNDLE, 'utf8');
  } catch {
    // no system bundle: the test CA alone
  }
  writeFileSync(bundle, system + readFileSync(join(dir, 'ca.pem'), 'utf8'));
  return { dir, caCert: join(dir, 'ca.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key'), bundle };
}

/**
 * `cmd` run with `bundle` bind-mounted over the system CA bundle in a private
 * mount namespace (needs root; nothing outside the process sees it). For
 * libcurl-based tools that have no CA option.
 */
export function withCaBundle(bundle: string, cmd: string[]): string[] {
  return [
    'unshare',
    '--mount',
    '--propagation',
    'private',
    'sh',
    '-c',
    `mount --bind "$0" ${SYSTEM_BUNDLE} && exec "$@"`,
    bundle,
    ...cmd,
  ];
}
