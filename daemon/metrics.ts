// Counters the daemon exposes at GET /metrics in the Prometheus text format.
// Plain numbers incremented in place; rendering is the only logic here.

export interface DaemonCounters {
  /** HTTP requests received (all routes). */
  requests: number;
  /** Body bytes fetched from the origin (indexes, ranges, chunks, proxied files). */
  originBytes: number;
  /** Requests made to the origin. */
  originRequests: number;
  /** Image bytes taken from local seeds instead of the network. */
  bytesReused: number;
  /** Image bytes sent to clients from assemblies. */
  bytesServed: number;
  assembliesStarted: number;
  assembliesCompleted: number;
  /** Assemblies that could not complete correctly (client download aborted). */
  assemblyFailures: number;
  /** Image requests answered by a full pass-through instead of a delta. */
  fallbacks: number;
  /** Non-image requests passed through (redirected or proxied). */
  passthroughs: number;
  /** Requests refused as unsafe (400). */
  rejected: number;
}

/**
 * Fresh counters. With `origin` (an HttpClient's stats), originBytes and originRequests read the client's own
 * counts: origin traffic is counted once, by the HTTP client (every body byte, whoever reads it).
 */
export function newCounters(origin?: { bytes: number; requests: number }): DaemonCounters {
  const counters: DaemonCounters = {
    requests: 0,
    originBytes: 0,
    originRequests: 0,
    bytesReused: 0,
    bytesServed: 0,
    assembliesStarted: 0,
    assembliesCompleted: 0,
    assemblyFailures: 0,
    fallbacks: 0,
    passthroughs: 0,
    rejected: 0,
  };
  if (origin) {
    Object.defineProperties(counters, {
      originBytes: { get: () => origin.bytes, enumerable: true },
      originRequests: { get: () => origin.requests, enumerable: true },
    });
  }
  return counters;
}

const HELP: Record<keyof DaemonCounters, [name: string, help: string]> = {
  requests: ['deltad_http_requests_total', 'HTTP requests received'],
  originBytes: ['deltad_origin_bytes_total', 'Body bytes fetched from the origin'],
  originRequests: ['deltad_origin_requests_total', 'Requests made to the origin'],
  bytesReused: ['deltad_reused_bytes_total', 'Image bytes taken from local seeds'],
  bytesServed: ['deltad_served_bytes_total', 'Assembled image bytes sent to clients'],
  assembliesStarted: ['deltad_assemblies_started_total', 'Delta assemblies started'],
  assembliesCompleted: ['deltad_assemblies_completed_total', 'Delta assemblies completed and verified'],
  assemblyFailures: ['deltad_assembly_failures_total', 'Assemblies that failed after bytes were sent'],
  fallbacks: ['deltad_fallbacks_total', 'Image requests served by a full pass-through'],
  passthroughs: ['deltad_passthroughs_total', 'Non-image requests passed through to the origin'],
  rejected: ['deltad_rejected_requests_total', 'Requests refused as unsafe'],
};

/**
 * Renders counters, optional gauges (values that go up and down) and optional extra counters (running totals of
 * other components) as Prometheus text exposition format 0.0.4.
 */
export function renderMetrics(
  c: DaemonCounters,
  gauges: Record<string, [help: string, value: number]> = {},
  counters: Record<string, [help: string, value: number]> = {},
): string {
  const out: string[] = [];
  for (const key of Object.keys(HELP) as (keyof DaemonCounters)[]) {
    const [name, help] = HELP[key];
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} counter`, `${name} ${c[key]}`);
  }
  for (const [kind, entries] of [
    ['gauge', gauges],
    ['counter', counters],
  ] as const) {
    for (const [name, [help, value]] of Object.entries(entries)) {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${kind}`, `${name} ${value}`);
    }
  }
  return out.join('\n') + '\n';
}
