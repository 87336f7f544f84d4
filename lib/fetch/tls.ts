// Certificate authorities for https origins: the system's CA store (what the
// distribution and the administrator trust, e.g. Debian's
// /etc/ssl/certs/ca-certificates.crt), plus an optional PEM file from the
// configuration for a private update server. Node's built-in Mozilla list is
// used only when no system store is found.
import { readFileSync } from 'node:fs';
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import { UsageError } from '../errors.js';

/** Where distributions keep their CA bundle (SSL_CERT_FILE first, as OpenSSL does). */
const SYSTEM_BUNDLES = [
  '/etc/ssl/certs/ca-certificates.crt',
  '/etc/pki/tls/certs/ca-bundle.crt',
  '/etc/ssl/ca-bundle.pem',
  '/etc/ssl/cert.pem',
];

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

let systemCas: string[] | undefined;

/** The system's CA certificates (read once), or Node's built-in list when the system has none. */
export function systemCertificates(env: NodeJS.ProcessEnv = process.env): string[] {
  if (systemCas) return systemCas;
  for (const file of [env.SSL_CERT_FILE, ...SYSTEM_BUNDLES]) {
    if (!file) continue;
    try {
      const certs = readFileSync(file, 'utf8').match(PEM_CERT);
      if (certs?.length) return (systemCas = certs);
    } catch {
      // next candidate
    }
  }
  return (systemCas = [...rootCertificates]);
}

/** The certificates of a PEM file; a clear error when it cannot be read or holds none. */
export function readCaFile(file: string): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new UsageError(`ca-file ${file}: cannot read: ${why}`);
  }
  const certs = text.match(PEM_CERT);
  if (!certs) throw new UsageError(`ca-file ${file}: no PEM certificate ("-----BEGIN CERTIFICATE-----") in it`);
  return certs;
}

/** One TLS context for every connection of a client: the system store plus `caFile`. */
export function trustContext(caFile?: string): SecureContext {
  const ca = [...systemCertificates(), ...(caFile ? readCaFile(caFile) : [])];
  try {
    return createSecureContext({ ca });
  } catch (err) {
    throw new UsageError(`${caFile ? `ca-file ${caFile}` : 'system CA store'}: ${(err as Error).message}`);
  }
}
