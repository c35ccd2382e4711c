/**
 * The control protocol between the CLI and the daemon: newline-delimited JSON over a
 * root-only Unix socket.
 *
 *   request   {"v":1, "id":"7", "op":"attach", "args":{...}}
 *   response  {"v":1, "id":"7", "ok":true, "result":{...}}
 *             {"v":1, "id":"7", "ok":false, "error":{"code":"VM_NOT_FOUND", "message":"..."}}
 *   stream    {"v":1, "id":"7", "ok":true, "stream":{...}}   (zero or more, before the final
 *             response; used by detach progress and stats --watch)
 *
 * A request that does not match this shape is answered with BAD_REQUEST and changes nothing.
 */
import { ElasticmemError } from '../native/errors.ts';

export const PROTOCOL_VERSION = 1;
/** A request line longer than this is refused (and the connection closed): nothing legitimate is this big. */
export const MAX_LINE = 64 * 1024;

export const OPS = ['ping', 'attach', 'resize', 'grow', 'detach', 'list', 'stats', 'watch'] as const;
export type Op = (typeof OPS)[number];

export interface Request {
  v: number;
  id: string;
  op: Op;
  args: Record<string, unknown>;
}

export interface ErrorBody {
  code: string;
  message: string;
}

export type Response =
  | { v: number; id: string; ok: true; result: unknown }
  | { v: number; id: string; ok: true; stream: unknown }
  | { v: number; id: string; ok: false; error: ErrorBody };

/** Argument schema per op: name -> type. Unknown arguments are refused, missing required ones too. */
const ARGS: Record<Op, Record<string, { type: 'string' | 'number' | 'boolean'; required?: boolean }>> = {
  ping: {},
  attach: { vm: { type: 'string', required: true }, local: { type: 'string' }, store: { type: 'string' }, storeKey: { type: 'string' }, compress: { type: 'boolean' }, tlsCa: { type: 'string' } },
  resize: { vm: { type: 'string', required: true }, local: { type: 'string', required: true } },
  grow: { vm: { type: 'string', required: true }, size: { type: 'string', required: true }, wait: { type: 'boolean' }, dimm: { type: 'boolean' } },
  detach: { vm: { type: 'string', required: true } },
  list: {},
  stats: { vm: { type: 'string', required: true } },
  watch: { vm: { type: 'string', required: true }, intervalMs: { type: 'number' } },
};

function bad(message: string): ElasticmemError {
  return new ElasticmemError(message, 'BAD_REQUEST');
}

/**
 * Validate one decoded request. Throws BAD_REQUEST (with the id when one could be read,
 * so the error can still be matched to the request).
 */
export function parseRequest(line: string): Request {
  let msg: unknown;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    throw bad(`request is not valid JSON (${(e as Error).message}); send one JSON object per line`);
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) throw bad('request must be a JSON object like {"v":1,"id":"1","op":"list","args":{}}');
  const m = msg as Record<string, unknown>;
  for (const k of Object.keys(m)) {
    if (!['v', 'id', 'op', 'args'].includes(k)) throw bad(`unknown request field '${k}'; a request has v, id, op, args`);
  }
  if (m.v !== PROTOCOL_VERSION) throw bad(`unsupported protocol version ${JSON.stringify(m.v)}; this daemon speaks v:${PROTOCOL_VERSION}`);
  if (typeof m.id !== 'string' && typeof m.id !== 'number') throw bad('request id must be a string or a number');
  const id = String(m.id);
  if (id.length === 0 || id.length > 64) throw bad('request id must be 1 to 64 characters');
  if (typeof m.op !== 'string' || !(OPS as readonly string[]).includes(m.op)) {
    throw bad(`unknown op ${JSON.stringify(m.op)}; known ops: ${OPS.join(', ')}`);
  }
  const op = m.op as Op;
  const args = m.args === undefined ? {} : m.args;
  if (typeof args !== 'object' || args === null || Array.isArray(args)) throw bad(`args of '${op}' must be a JSON object`);
  const schema = ARGS[op];
  const a = args as Record<string, unknown>;
  for (const [k, val] of Object.entries(a)) {
    const spec = schema[k];
    if (!spec) throw bad(`unknown argument '${k}' for '${op}'${Object.keys(schema).length ? `; allowed: ${Object.keys(schema).join(', ')}` : '; it takes none'}`);
    if (val !== undefined && typeof val !== spec.type) throw bad(`argument '${k}' of '${op}' must be a ${spec.type}, got ${JSON.stringify(val)}`);
  }
  for (const [k, spec] of Object.entries(schema)) {
    if (spec.required && a[k] === undefined) throw bad(`'${op}' needs argument '${k}'`);
  }
  return { v: PROTOCOL_VERSION, id, op, args: a };
}

/** Best effort: the id of a request that failed validation, so the error can carry it. */
export function salvageId(line: string): string {
  try {
    const m = JSON.parse(line) as { id?: unknown };
    if (typeof m?.id === 'string' || typeof m?.id === 'number') return String(m.id).slice(0, 64);
  } catch { /* not JSON */ }
  return '';
}

export function errorBody(e: unknown): ErrorBody {
  if (e instanceof ElasticmemError) return { code: e.code, message: e.message };
  const err = e as { code?: unknown; message?: unknown };
  return { code: typeof err?.code === 'string' ? err.code : 'INTERNAL', message: String(err?.message ?? e) };
}
