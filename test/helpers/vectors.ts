// The casync test vectors in test/fixtures/casync (made by Debian's casync with
// make-vectors.sh) and desync's chunker output in test/fixtures/desync-chunker.json.
// The chunk tables are read straight from casync's .caibx files by the small reader
// below, not by lib/caibx.ts, so the parser under test is not its own reference.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { REPO_ROOT } from './repo.js';

export const FIXTURES_DIR = join(REPO_ROOT, 'test', 'fixtures');
export const CASYNC_VECTORS_DIR = join(FIXTURES_DIR, 'casync');

export interface VectorChunk {
  offset: number;
  size: number;
  id: string;
}

export interface KeptChunkFile extends VectorChunk {
  index: number;
  /** Path inside the vector's store (`<4hex>/<id>.cacnk`). */
  file: string;
  file_size: number;
}

export interface Vector {
  vector: string;
  input: string;
  input_size: number;
  input_sha256: string;
  casync_options: string[];
  /** What `casync make` printed: the digest of the whole input. */
  casync_stdout: string;
  feature_flags: bigint;
  digest: 'sha512-256' | 'sha256';
  chunk_size_min: number;
  chunk_size_avg: number;
  chunk_size_max: number;
  chunk_count: number;
  chunks: VectorChunk[];
  kept_chunk_files: KeptChunkFile[];
}

interface VectorsFile {
  casync: string;
  inputs: { name: string; size: number; sha256: string }[];
  vectors: {
    vector: string;
    input: string;
    casync_options: string[];
    casync_stdout: string;
    kept_chunks: { index: number; file: string }[];
  }[];
}

const SHA512_256_FLAG = 1n << 61n;
const HEADER = 64;
const ITEM = 40;
const TAIL = 40;

function readVectorsFile(): VectorsFile {
  return JSON.parse(readFileSync(join(CASYNC_VECTORS_DIR, 'vectors.json'), 'utf8')) as VectorsFile;
}

let cached: Vector[] | undefined;

/** All casync vectors, with casync's chunk table from each .caibx. */
export function loadVectors(): Vector[] {
  if (cached) return cached;
  const file = readVectorsFile();
  cached = file.vectors.map((e) => {
    const input = file.inputs.find((i) => i.name === e.input);
    assert.ok(input, `${e.vector}: input ${e.input} listed in vectors.json`);
    const bytes = readFileSync(join(CASYNC_VECTORS_DIR, 'caibx', `${e.vector}.caibx`));
    const flags = bytes.readBigUInt64LE(16);
    const count = (bytes.length - HEADER - TAIL) / ITEM;
    assert.ok(Number.isInteger(count), `${e.vector}.caibx: whole number of table items`);
    const chunks: VectorChunk[] = [];
    for (let i = 0, start = 0; i < count; i++) {
      const end = Number(bytes.readBigUInt64LE(HEADER + ITEM * i));
      const id = bytes.subarray(HEADER + ITEM * i + 8, HEADER + ITEM * (i + 1)).toString('hex');
      chunks.push({ offset: start, size: end - start, id });
      start = end;
    }
    const vector: Vector = {
      vector: e.vector,
      input: e.input,
      input_size: input.size,
      input_sha256: input.sha256,
      casync_options: e.casync_options,
      casync_stdout: e.casync_stdout,
      feature_flags: flags,
      digest: flags & SHA512_256_FLAG ? 'sha512-256' : 'sha256',
      chunk_size_min: Number(bytes.readBigUInt64LE(24)),
      chunk_size_avg: Number(bytes.readBigUInt64LE(32)),
      chunk_size_max: Number(bytes.readBigUInt64LE(40)),
      chunk_count: count,
      chunks,
      kept_chunk_files: [],
    };
    vector.kept_chunk_files = e.kept_chunks.map((k) => ({
      ...chunks[k.index],
      index: k.index,
      file: k.file,
      file_size: statSync(join(storePath(vector), k.file)).size,
    }));
    return vector;
  });
  return cached;
}

export function caibxPath(v: Vector): string {
  return join(CASYNC_VECTORS_DIR, 'caibx', `${v.vector}.caibx`);
}

/** The vector's store directory (only the kept chunk files). */
export function storePath(v: Vector): string {
  return join(CASYNC_VECTORS_DIR, 'store', `${v.vector}.castr`);
}

/** The casync version that made the vectors (as recorded by make-vectors.sh). */
export function vectorsCasyncVersion(): string {
  return readVectorsFile().casync;
}

const inputs = new Map<string, Buffer>();

/**
 * A getter for the vectors' inputs: each is generated once (test/fixtures/casync/inputs.mjs)
 * and checked against the SHA-256 that make-vectors.sh recorded.
 */
export async function vectorInputs(): Promise<(name: string) => Buffer> {
  const mod = (await import(pathToFileURL(join(CASYNC_VECTORS_DIR, 'inputs.mjs')).href)) as {
    INPUTS: Record<string, () => Buffer>;
  };
  const recorded = readVectorsFile().inputs;
  return (name) => {
    let data = inputs.get(name);
    if (!data) {
      const make = mod.INPUTS[name] as (() => Buffer) | undefined;
      const expected = recorded.find((i) => i.name === name);
      assert.ok(make && expected, `input ${name} known to inputs.mjs and vectors.json`);
      data = make();
      assert.equal(createHash('sha256').update(data).digest('hex'), expected.sha256, `regenerated ${name}`);
      inputs.set(name, data);
    }
    return data;
  };
}

export interface DesyncVector {
  vector: string;
  input: string;
  min: number;
  avg: number;
  max: number;
  /** Chunk sizes in order, as desync's chunker cut them. */
  sizes: number[];
}

/** desync's chunker output where it differs from casync's (see test/fixtures/README.md). */
export function loadDesyncVectors(): DesyncVector[] {
  return (JSON.parse(readFileSync(join(FIXTURES_DIR, 'desync-chunker.json'), 'utf8')) as { vectors: DesyncVector[] })
    .vectors;
}
