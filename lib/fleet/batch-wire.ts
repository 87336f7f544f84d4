// The wire format of a deltad proxy's batch endpoint (docs/FLEET.md): one
// request names many chunk IDs, one streamed response carries them as frames.
//
//   response = MAGIC ("DELTADB1", 8 bytes) frame* end-frame
//   frame    = type u8 | id [32] | size u32le | length u32le | payload [length]
//     type 1 CHUNK    size = uncompressed size, payload = the .cacnk (zstd) bytes
//     type 2 MISSING  the upstream does not have the chunk; no payload
//     type 3 ERROR    fetching it failed; payload = UTF-8 message
//     type 0 END      id all zero, size = number of frames before it; no payload
//
// A response without its END frame was truncated. Every distinct requested ID
// gets exactly one frame, in whatever order chunks become ready.
import { OriginError, UsageError } from '../errors.js';
import { ID_SIZE } from '../format/caibx.js';

export const BATCH_MAGIC = Buffer.from('DELTADB1', 'latin1');
export const BATCH_CONTENT_TYPE = 'application/vnd.deltad.chunks';
export const BATCH_REQUEST_TYPE = 'application/octet-stream';
export const FRAME_HEADER_SIZE = 1 + ID_SIZE + 4 + 4;
/** Most IDs one batch request may name (128 KiB of request body). */
export const MAX_BATCH_IDS = 4096;
/** Largest payload a frame may announce: a 128 MiB chunk's zstd bound, rounded up. */
const MAX_PAYLOAD = 129 * 1024 * 1024;

export const FrameType = { End: 0, Chunk: 1, Missing: 2, Error: 3 } as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export interface Frame {
  type: FrameType;
  id: Buffer;
  size: number;
  payload: Buffer;
}

export function encodeFrame(
  type: FrameType,
  id: Uint8Array,
  size: number,
  payload: Uint8Array = Buffer.alloc(0),
): Buffer[] {
  const head = Buffer.alloc(FRAME_HEADER_SIZE);
  head[0] = type;
  head.set(id, 1);
  head.writeUInt32LE(size, 1 + ID_SIZE);
  head.writeUInt32LE(payload.length, 1 + ID_SIZE + 4);
  return payload.length ? [head, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength)] : [head];
}

export function encodeEnd(frames: number): Buffer {
  return encodeFrame(FrameType.End, Buffer.alloc(ID_SIZE), frames)[0];
}

/** Parses a POST body of concatenated 32-byte IDs. */
export function parseIdList(body: Buffer): Buffer[] {
  if (body.length % ID_SIZE !== 0)
    throw new UsageError(`batch request body is ${body.length} bytes, not a multiple of ${ID_SIZE} (raw chunk IDs)`);
  const n = body.length / ID_SIZE;
  if (n === 0) throw new UsageError('batch request names no chunk IDs');
  if (n > MAX_BATCH_IDS)
    throw new UsageError(`batch request names ${n} chunk IDs, more than the limit of ${MAX_BATCH_IDS}`);
  return Array.from({ length: n }, (_, i) => body.subarray(i * ID_SIZE, (i + 1) * ID_SIZE));
}

/**
 * Incremental parser of a batch response body: yields frames as soon as they
 * are complete, and throws an OriginError naming `source` for a bad magic, an
 * impossible frame, or a body that ends before the END frame.
 */
export async function* readFrames(body: AsyncIterable<Uint8Array>, source: string): AsyncGenerator<Frame> {
  let buf = Buffer.alloc(0);
  let seenMagic = false;
  let frames = 0;
  const fail = (what: string): never => {
    throw new OriginError(`${source}: invalid batch response: ${what}`);
  };
  for await (const part of body) {
    buf = buf.length ? Buffer.concat([buf, part]) : Buffer.from(part);
    if (!seenMagic) {
      if (buf.length < BATCH_MAGIC.length) continue;
      if (!buf.subarray(0, BATCH_MAGIC.length).equals(BATCH_MAGIC))
        fail(`bad magic ${buf.subarray(0, 8).toString('hex')}`);
      buf = buf.subarray(BATCH_MAGIC.length);
      seenMagic = true;
    }
    while (buf.length >= FRAME_HEADER_SIZE) {
      const type = buf[0];
      const size = buf.readUInt32LE(1 + ID_SIZE);
      const length = buf.readUInt32LE(1 + ID_SIZE + 4);
      if (type > FrameType.Error) fail(`unknown frame type ${type} in frame ${frames}`);
      if (length > MAX_PAYLOAD) fail(`frame ${frames} announces ${length} payload bytes`);
      if (buf.length < FRAME_HEADER_SIZE + length) break;
      const id = Buffer.from(buf.subarray(1, 1 + ID_SIZE));
      const payload = Buffer.from(buf.subarray(FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + length));
      buf = buf.subarray(FRAME_HEADER_SIZE + length);
      if (type === FrameType.End) {
        if (size !== frames) fail(`END frame counts ${size} frames, ${frames} arrived`);
        if (buf.length) fail(`${buf.length} bytes after the END frame`);
        return;
      }
      frames++;
      yield { type: type as FrameType, id, size, payload };
    }
  }
  throw new OriginError(`${source}: batch response truncated after ${frames} frames (no END frame)`, {
    transient: true,
  });
}
