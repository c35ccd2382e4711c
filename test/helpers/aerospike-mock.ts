/**
 * MOCK AEROSPIKE SERVER — a stand-in for a server that cannot exist on this machine.
 *
 * No Aerospike server can be installed here (only npm and Debian apt are reachable, and
 * Aerospike is in neither), so the `aerospike://` adapter (kvstore/aerospike.ts) would
 * otherwise never run. This file is a small TCP server that speaks enough of the real
 * Aerospike wire protocol for the official client (npm `aerospike`, which wraps the
 * Aerospike C client) to seed, tend the cluster and run what the adapter uses. It is a
 * mock: it proves that the adapter and the official client work together over the wire
 * format; it proves nothing about a real server's behaviour beyond what is written here.
 *
 * What it speaks (byte formats from the Aerospike C client's as_proto / as_msg / batch /
 * scan / info code, which the official client sends and parses):
 *  - the 8-byte proto header: version 2, type (1 info, 2 admin, 3 AS_MSG, 4 compressed),
 *    48-bit big-endian body size;
 *  - info: names separated by '\n', answered `name\tvalue\n` for each name asked, as a
 *    single node owning all 4096 partitions. The client (C client 7.x inside npm
 *    aerospike 6.7.1) seeds with "node, partition-generation, build", then asks
 *    "peers-clear-std", "partition-generation, replicas" and, every tend, "node,
 *    peers-generation, partition-generation". Answered: node, features, partitions,
 *    partition-generation, peers-generation, peers-clear-std (no peers), replicas /
 *    replicas-all / replicas-master (base64 bitmap of 4096 partitions), cluster-name,
 *    build / version, namespaces, service-clear-std, truncate / truncate-namespace;
 *  - AS_MSG (22-byte header, fields, ops): single-record read / write / delete, the
 *    batch-index protocol (field 41, the "batch-any" per-record format with the
 *    repeat / info / gen / ttl / info4 flags) for reads, writes and removes, and a
 *    partition scan of one set (fields namespace, set, pid array, digest array, max
 *    records, filter expression, socket timeout, task id; bin selection or no bins);
 *  - filter expressions (field 43, msgpack): comparisons, and / or / not, bin reads of
 *    the basic types, literals; anything else is answered with result code 4 (parameter
 *    error), as a server would reject an expression it cannot parse;
 *  - compressed requests (type 4) and, when asked for, compressed responses;
 *  - admin messages (type 2, e.g. login): answered "security not enabled" (52).
 * Records live in memory, keyed by namespace + digest (the RIPEMD-160 the client
 * computes; the mock never needs the user key). A restart starts empty, like a real
 * server with an in-memory namespace.
 *
 * Fault injection (for tests of error paths): a data command can be answered with a
 * result code (the whole command, or every record of a batch) or by closing the socket;
 * info / tending is never affected, so the client keeps seeing a healthy cluster.
 *
 * Use from a test (the mock runs in a child process: the client's connect() blocks the
 * test's event loop, and pause() needs a process to SIGSTOP):
 *
 *   const m = await startMockAerospike(t);        // m.port, m.uri('ns', 'set')
 *   await m.fault({ kind: 'result', code: 1, on: 'read' });
 *   await m.restart(); m.pause(); m.resume(); await m.stop();
 *
 * Run alone: node --import=tsx test/helpers/aerospike-mock.ts --port 3000 [--namespace test]...
 */
import net from 'node:net';
import zlib from 'node:zlib';
import fs from 'node:fs';
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePort, freezeProcess, type TeardownContext } from './servers.ts';

// --------------------------------------------------------------------- protocol constants

const PROTO_VERSION = 2;
const TYPE_INFO = 1;
const TYPE_ADMIN = 2;
const TYPE_MSG = 3;
const TYPE_COMPRESSED = 4;
const MSG_HEADER_SIZE = 22;
const N_PARTITIONS = 4096;

const INFO1_READ = 0x01;
const INFO1_GET_ALL = 0x02;
const INFO1_BATCH_INDEX = 0x08;
const INFO1_GET_NOBINDATA = 0x20;
const INFO1_COMPRESS_RESPONSE = 0x80;
const INFO2_WRITE = 0x01;
const INFO2_DELETE = 0x02;
const INFO2_GENERATION = 0x04;
const INFO2_GENERATION_GT = 0x08;
const INFO2_CREATE_ONLY = 0x20;
const INFO2_RESPOND_ALL_OPS = 0x80;
const INFO3_LAST = 0x01;
const INFO3_UPDATE_ONLY = 0x08;
const INFO3_CREATE_OR_REPLACE = 0x10;
const INFO3_REPLACE_ONLY = 0x20;

const FIELD_NAMESPACE = 0;
const FIELD_SET = 1;
const FIELD_KEY = 2;
const FIELD_DIGEST = 4;
const FIELD_TASK_ID = 7;
const FIELD_PID_ARRAY = 11;
const FIELD_DIGEST_ARRAY = 12;
const FIELD_MAX_RECORDS = 13;
const FIELD_BATCH_INDEX = 41;
const FIELD_BATCH_INDEX_WITH_SET = 42;
const FIELD_FILTER_EXP = 43;

const OP_READ = 1;
const OP_WRITE = 2;
const OP_TOUCH = 11;
const OP_DELETE = 14;

const BATCH_MSG_REPEAT = 0x01;
const BATCH_MSG_INFO = 0x02;
const BATCH_MSG_GEN = 0x04;
const BATCH_MSG_TTL = 0x08;
const BATCH_MSG_INFO4 = 0x10;

/** Particle types (as_bytes_type). */
const P_NULL = 0;
const P_INTEGER = 1;
const P_DOUBLE = 2;
const P_STRING = 3;
const P_BLOB = 4;
const P_BOOL = 17;

/** Result codes (as_status, server side). */
export const RC = {
  OK: 0,
  SERVER_ERROR: 1,
  KEY_NOT_FOUND: 2,
  GENERATION: 3,
  PARAMETER: 4,
  KEY_EXISTS: 5,
  SERVER_FULL: 8,
  TIMEOUT: 9,
  DEVICE_OVERLOAD: 18,
  NAMESPACE_NOT_FOUND: 20,
  FILTERED_OUT: 27,
  SECURITY_NOT_ENABLED: 52,
} as const;

// --------------------------------------------------------------------- records

interface Particle { type: number; data: Buffer }

interface StoredRecord {
  set: string;
  digest: Buffer;
  bins: Map<string, Particle>;
  gen: number;
}

/** One record's part of a request: where, how, and which ops. */
interface RecordRequest {
  ns: string;
  set: string | undefined;
  digest: Buffer;
  info1: number;
  info2: number;
  info3: number;
  gen: number;
  filter: Buffer | undefined;
  ops: Op[];
}

interface Op { op: number; type: number; name: string; data: Buffer }

interface Field { type: number; data: Buffer }

/** The records of one mock server; keyed by namespace + digest, as in Aerospike. */
class Store {
  readonly records = new Map<string, StoredRecord>();
  constructor(readonly namespaces: string[]) {}

  static key(ns: string, digest: Buffer): string {
    return `${ns}\0${digest.toString('hex')}`;
  }
}

export function partitionId(digest: Buffer): number {
  return (digest[0]! | (digest[1]! << 8)) & (N_PARTITIONS - 1);
}

// --------------------------------------------------------------------- msgpack (expressions)

type Mp = null | boolean | number | bigint | string | Buffer | Mp[] | Map<Mp, Mp> | { ext: number; data: Buffer };

class MsgpackReader {
  pos = 0;
  constructor(private readonly b: Buffer) {}

  read(): Mp {
    const b = this.b;
    const t = b[this.pos++];
    if (t === undefined) throw new MockError(RC.PARAMETER, 'truncated msgpack');
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if ((t & 0xf0) === 0x80) return this.map(t & 0x0f);
    if ((t & 0xf0) === 0x90) return this.array(t & 0x0f);
    if ((t & 0xe0) === 0xa0) return this.str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return this.bytes(this.u(1));
      case 0xc5: return this.bytes(this.u(2));
      case 0xc6: return this.bytes(this.u(4));
      case 0xca: { const v = b.readFloatBE(this.pos); this.pos += 4; return v; }
      case 0xcb: { const v = b.readDoubleBE(this.pos); this.pos += 8; return v; }
      case 0xcc: return this.u(1);
      case 0xcd: return this.u(2);
      case 0xce: return this.u(4);
      case 0xcf: { const v = b.readBigUInt64BE(this.pos); this.pos += 8; return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v; }
      case 0xd0: { const v = b.readInt8(this.pos); this.pos += 1; return v; }
      case 0xd1: { const v = b.readInt16BE(this.pos); this.pos += 2; return v; }
      case 0xd2: { const v = b.readInt32BE(this.pos); this.pos += 4; return v; }
      case 0xd3: { const v = b.readBigInt64BE(this.pos); this.pos += 8; return Number.isSafeInteger(Number(v)) ? Number(v) : v; }
      case 0xd4: return this.ext(1);
      case 0xd5: return this.ext(2);
      case 0xd6: return this.ext(4);
      case 0xd7: return this.ext(8);
      case 0xd8: return this.ext(16);
      case 0xc7: return this.ext(this.u(1));
      case 0xc8: return this.ext(this.u(2));
      case 0xc9: return this.ext(this.u(4));
      case 0xd9: return this.str(this.u(1));
      case 0xda: return this.str(this.u(2));
      case 0xdb: return this.str(this.u(4));
      case 0xdc: return this.array(this.u(2));
      case 0xdd: return this.array(this.u(4));
      case 0xde: return this.map(this.u(2));
      case 0xdf: return this.map(this.u(4));
    }
    throw new MockError(RC.PARAMETER, `msgpack type 0x${t.toString(16)} not supported by the mock`);
  }

  private u(n: number): number {
    const v = this.b.readUIntBE(this.pos, n);
    this.pos += n;
    return v;
  }
  private bytes(n: number): Buffer {
    if (this.pos + n > this.b.length) throw new MockError(RC.PARAMETER, 'truncated msgpack');
    const v = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  /** Aerospike strings are msgpack str: literal values carry a leading particle-type byte, bin names do not; kept raw here. */
  private str(n: number): Buffer { return this.bytes(n); }
  private ext(n: number): Mp { const type = this.b.readInt8(this.pos++); return { ext: type, data: this.bytes(n) }; }
  private array(n: number): Mp[] { const a: Mp[] = []; for (let i = 0; i < n; i++) a.push(this.read()); return a; }
  private map(n: number): Map<Mp, Mp> { const m = new Map<Mp, Mp>(); for (let i = 0; i < n; i++) m.set(this.read(), this.read()); return m; }
}

// Expression op codes (as_exp_ops) and result types (as_exp_type).
const EXP_EQ = 1, EXP_NE = 2, EXP_GT = 3, EXP_GE = 4, EXP_LT = 5, EXP_LE = 6;
const EXP_AND = 16, EXP_OR = 17, EXP_NOT = 18;
const EXP_DIGEST_MODULO = 64, EXP_BIN = 81, EXP_BIN_TYPE = 82;
const EXP_QUOTED = 126;
const EXPT_NIL = 0, EXPT_BOOL = 1, EXPT_INT = 2, EXPT_STR = 3, EXPT_BLOB = 6, EXPT_FLOAT = 7;

type Val = null | boolean | number | bigint | string | Buffer;

/** Evaluate a filter expression against a record; true keeps the record. */
function evalFilter(exp: Buffer, rec: StoredRecord): boolean {
  const r = new MsgpackReader(exp);
  const tree = r.read();
  return evalExp(tree, rec) === true;
}

function evalExp(e: Mp, rec: StoredRecord): Val {
  if (!Array.isArray(e)) return literal(e);
  const [op, ...args] = e;
  switch (op) {
    case EXP_EQ: case EXP_NE: case EXP_GT: case EXP_GE: case EXP_LT: case EXP_LE: {
      const a = evalExp(args[0]!, rec);
      const b = evalExp(args[1]!, rec);
      if (a === null || b === null) return false; // unknown (e.g. missing bin): the server treats it as false
      const c = compare(a, b);
      if (c === undefined) return false;
      return op === EXP_EQ ? c === 0 : op === EXP_NE ? c !== 0 : op === EXP_GT ? c > 0 : op === EXP_GE ? c >= 0 : op === EXP_LT ? c < 0 : c <= 0;
    }
    case EXP_AND: return args.every((x) => evalExp(x, rec) === true);
    case EXP_OR: return args.some((x) => evalExp(x, rec) === true);
    case EXP_NOT: return evalExp(args[0]!, rec) !== true;
    case EXP_BIN: {
      const type = args[0];
      const name = args[1];
      if (!Buffer.isBuffer(name)) throw new MockError(RC.PARAMETER, 'bin name expected in expression');
      const p = rec.bins.get(name.toString('utf8'));
      if (!p) return null;
      const v = particleValue(p);
      if (type === EXPT_INT && typeof v !== 'number' && typeof v !== 'bigint') return null;
      if (type === EXPT_STR && typeof v !== 'string') return null;
      if (type === EXPT_BLOB && !Buffer.isBuffer(v)) return null;
      if (type === EXPT_FLOAT && typeof v !== 'number') return null;
      if (type === EXPT_BOOL && typeof v !== 'boolean') return null;
      if (type !== EXPT_INT && type !== EXPT_STR && type !== EXPT_BLOB && type !== EXPT_FLOAT && type !== EXPT_BOOL && type !== EXPT_NIL)
        throw new MockError(RC.PARAMETER, `expression bin type ${String(type)} not supported by the mock`);
      return v;
    }
    case EXP_BIN_TYPE: {
      const name = args[0];
      if (!Buffer.isBuffer(name)) throw new MockError(RC.PARAMETER, 'bin name expected in expression');
      return rec.bins.get(name.toString('utf8'))?.type ?? P_NULL;
    }
    case EXP_DIGEST_MODULO: {
      const mod = Number(args[0]);
      return rec.digest.readUInt32LE(16) % mod;
    }
    case EXP_QUOTED: return literal(args[0]!);
  }
  throw new MockError(RC.PARAMETER, `expression op ${String(op)} not supported by the mock`);
}

function literal(v: Mp): Val {
  if (v === null || typeof v === 'boolean' || typeof v === 'number' || typeof v === 'bigint') return v;
  if (Buffer.isBuffer(v)) {
    // Literal strings and blobs are sent with their particle type in front.
    if (v[0] === P_STRING) return v.subarray(1).toString('utf8');
    if (v[0] === P_BLOB) return v.subarray(1);
    return v.toString('utf8');
  }
  throw new MockError(RC.PARAMETER, 'expression literal not supported by the mock');
}

function compare(a: Val, b: Val): number | undefined {
  if ((typeof a === 'number' || typeof a === 'bigint') && (typeof b === 'number' || typeof b === 'bigint')) {
    const x = typeof a === 'bigint' || typeof b === 'bigint' ? BigInt(a as number) - BigInt(b as number) : (a as number) - (b as number);
    return x > 0 ? 1 : x < 0 ? -1 : 0;
  }
  if (typeof a === 'string' && typeof b === 'string') return a < b ? -1 : a > b ? 1 : 0;
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return Buffer.compare(a, b);
  if (typeof a === 'boolean' && typeof b === 'boolean') return a === b ? 0 : a ? 1 : -1;
  return undefined;
}

function particleValue(p: Particle): Val {
  switch (p.type) {
    case P_INTEGER: { const v = p.data.readBigInt64BE(0); return Number.isSafeInteger(Number(v)) ? Number(v) : v; }
    case P_DOUBLE: return p.data.readDoubleBE(0);
    case P_STRING: return p.data.toString('utf8');
    case P_BOOL: return p.data[0] !== 0;
    case P_NULL: return null;
    default: return p.data;
  }
}

// --------------------------------------------------------------------- wire helpers

class MockError extends Error {
  constructor(readonly code: number, message: string) { super(message); }
}

class Reader {
  pos = 0;
  constructor(readonly b: Buffer) {}
  u8(): number { this.need(1); return this.b[this.pos++]!; }
  u16(): number { this.need(2); const v = this.b.readUInt16BE(this.pos); this.pos += 2; return v; }
  u32(): number { this.need(4); const v = this.b.readUInt32BE(this.pos); this.pos += 4; return v; }
  bytes(n: number): Buffer { this.need(n); const v = this.b.subarray(this.pos, this.pos + n); this.pos += n; return v; }
  private need(n: number): void {
    if (this.pos + n > this.b.length) throw new MockError(RC.PARAMETER, `message truncated at byte ${this.pos} (+${n} of ${this.b.length})`);
  }
}

function readFields(r: Reader, n: number): Field[] {
  const out: Field[] = [];
  for (let i = 0; i < n; i++) {
    const size = r.u32();
    if (size < 1) throw new MockError(RC.PARAMETER, 'field of size 0');
    const type = r.u8();
    out.push({ type, data: r.bytes(size - 1) });
  }
  return out;
}

function readOps(r: Reader, n: number): Op[] {
  const out: Op[] = [];
  for (let i = 0; i < n; i++) {
    const size = r.u32();
    const op = r.u8();
    const type = r.u8();
    r.u8(); // version / flags
    const nameLen = r.u8();
    if (size < 4 + nameLen) throw new MockError(RC.PARAMETER, `op of size ${size} shorter than its name`);
    const name = r.bytes(nameLen).toString('utf8');
    out.push({ op, type, name, data: r.bytes(size - 4 - nameLen) });
  }
  return out;
}

function proto(type: number, body: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h[0] = PROTO_VERSION;
  h[1] = type;
  h.writeUIntBE(body.length, 2, 6);
  return Buffer.concat([h, body]);
}

function field(type: number, data: Buffer): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt32BE(data.length + 1, 0);
  h[4] = type;
  return Buffer.concat([h, data]);
}

function binOp(name: string, p: Particle | undefined): Buffer {
  const n = Buffer.from(name, 'utf8');
  const data = p?.data ?? Buffer.alloc(0);
  const h = Buffer.alloc(8);
  h.writeUInt32BE(4 + n.length + data.length, 0);
  h[4] = OP_READ;
  h[5] = p?.type ?? P_NULL;
  h[6] = 0;
  h[7] = n.length;
  return Buffer.concat([h, n, data]);
}

interface MsgOut {
  info3?: number;
  result: number;
  gen?: number;
  /** transaction_ttl: the batch index in batch responses. */
  index?: number;
  fields?: Buffer[];
  ops?: Buffer[];
}

function msg(m: MsgOut): Buffer {
  const h = Buffer.alloc(MSG_HEADER_SIZE);
  h[0] = MSG_HEADER_SIZE;
  h[3] = m.info3 ?? 0;
  h[5] = m.result;
  h.writeUInt32BE(m.gen ?? 0, 6);
  h.writeUInt32BE(0, 10); // record void time: never expires
  h.writeUInt32BE(m.index ?? 0, 14);
  h.writeUInt16BE(m.fields?.length ?? 0, 18);
  h.writeUInt16BE(m.ops?.length ?? 0, 20);
  return Buffer.concat([h, ...(m.fields ?? []), ...(m.ops ?? [])]);
}

// --------------------------------------------------------------------- faults

export type Fault =
  /** Answer the next `times` data commands of kind `on` with `code` for the whole command. */
  | { kind: 'result'; code: number; on?: FaultTarget; times?: number }
  /**
   * Answer every record of the next `times` commands of kind `on` with `code` (a batch
   * itself succeeds, its records fail; a single-record command, which is what the client
   * sends for a batch of one key, fails with `code`).
   */
  | { kind: 'record-result'; code: number; on?: FaultTarget; times?: number }
  /** Close the connection instead of answering the next `times` data commands of kind `on`. */
  | { kind: 'close'; on?: FaultTarget; times?: number }
  | { kind: 'clear' };

/** Reads (batch or single), writes and deletes (batch or single), scans / queries, or any. */
export type FaultTarget = 'read' | 'write' | 'scan' | 'any';

type CommandKind = 'batch' | 'scan' | 'single';

interface ArmedFault { f: Exclude<Fault, { kind: 'clear' }>; left: number }

// --------------------------------------------------------------------- the server

export interface MockOptions {
  port: number;
  host?: string;
  namespaces?: string[];
  /** A name for the node (stable across restarts on the same port). */
  nodeName?: string;
  clusterName?: string;
  /** Log requests to stderr. */
  verbose?: boolean;
}

export class MockAerospikeServer {
  readonly store: Store;
  readonly nodeName: string;
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private faults: ArmedFault[] = [];
  private readonly partitionGeneration = 1;
  /** Counts of commands served, by kind (tests can check the mock was really used). */
  readonly served = { info: 0, batch: 0, scan: 0, single: 0, admin: 0, compressed: 0 };

  constructor(readonly o: MockOptions) {
    this.store = new Store(o.namespaces ?? ['test']);
    this.nodeName = o.nodeName ?? `BB9${o.port.toString(16).toUpperCase().padStart(4, '0')}7F000001`;
  }

  async listen(): Promise<void> {
    const server = net.createServer((s) => this.connection(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.o.port, this.o.host ?? '127.0.0.1', () => resolve());
    });
    this.server = server;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  setFault(f: Fault): void {
    if (f.kind === 'clear') this.faults = [];
    else this.faults.push({ f, left: f.times ?? Infinity });
  }

  private takeFault(match: (f: ArmedFault['f']) => boolean): ArmedFault['f'] | undefined {
    for (const a of this.faults) {
      if (a.left > 0 && match(a.f)) {
        a.left--;
        this.faults = this.faults.filter((x) => x.left > 0);
        return a.f;
      }
    }
    return undefined;
  }

  private log(...args: unknown[]): void {
    if (this.o.verbose) console.error('[aerospike-mock]', ...args);
  }

  // ------------------------------------------------------------------- connections

  private connection(s: net.Socket): void {
    this.sockets.add(s);
    s.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let busy = false;
    const queue: { type: number; body: Buffer }[] = [];
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => { /* the client went away */ });
    const pump = async () => {
      if (busy) return;
      busy = true;
      try {
        while (queue.length && !s.destroyed) {
          const { type, body } = queue.shift()!;
          await this.request(s, type, body);
        }
      } catch (e) {
        this.log('connection error', e);
        s.destroy();
      } finally {
        busy = false;
      }
    };
    s.on('data', (d) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 8) {
        if (buf[0] !== PROTO_VERSION) { this.log(`bad proto version ${buf[0]}`); s.destroy(); return; }
        const size = buf.readUIntBE(2, 6);
        if (buf.length < 8 + size) break;
        queue.push({ type: buf[1]!, body: buf.subarray(8, 8 + size) });
        buf = buf.subarray(8 + size);
      }
      void pump();
    });
  }

  private async request(s: net.Socket, type: number, body: Buffer): Promise<void> {
    switch (type) {
      case TYPE_INFO:
        this.served.info++;
        s.write(proto(TYPE_INFO, Buffer.from(this.info(body.toString('utf8')), 'utf8')));
        return;
      case TYPE_ADMIN: {
        // Login / user administration: this mock has no security, like a server without it enabled.
        this.served.admin++;
        const h = Buffer.alloc(16);
        h[1] = RC.SECURITY_NOT_ENABLED;
        h[2] = body[2] ?? 0;
        s.write(proto(TYPE_ADMIN, h));
        return;
      }
      case TYPE_COMPRESSED: {
        this.served.compressed++;
        const inner = zlib.inflateSync(body.subarray(8));
        if (inner.length < 8 || inner[0] !== PROTO_VERSION) throw new Error('bad compressed message');
        return this.request(s, inner[1]!, inner.subarray(8, 8 + inner.readUIntBE(2, 6)));
      }
      case TYPE_MSG:
        return this.message(s, body);
      default:
        this.log(`unknown proto type ${type}`);
        s.destroy();
    }
  }

  // ------------------------------------------------------------------- info

  private info(request: string): string {
    const names = request.split('\n').filter((n) => n !== '');
    this.log('info', names);
    let out = '';
    for (const name of names) {
      const v = this.infoValue(name);
      if (v !== undefined) out += `${name}\t${v}\n`;
      else out += `${name}\tERROR::unrecognized command\n`;
    }
    return out;
  }

  private infoValue(name: string): string | undefined {
    const port = this.o.port;
    const ns = this.store.namespaces;
    const bitmap = Buffer.alloc(N_PARTITIONS / 8, 0xff).toString('base64');
    switch (name) {
      case 'node': return this.nodeName;
      case 'features':
        return 'batch-any;batch-index;blob-bits;cdt-list;cdt-map;cluster-stable;float;geo;sindex-exists;peers;pipelining;pquery;pscans;query-show;relaxed-sc;replicas;replicas-all;replicas-master;replicas-max;truncate-namespace;udf';
      case 'partitions': return String(N_PARTITIONS);
      case 'partition-generation': return String(this.partitionGeneration);
      case 'rebalance-generation': return String(this.partitionGeneration);
      case 'peers-generation': return '1';
      case 'cluster-stable': return '0';
      case 'peers-clear-std': case 'peers-clear-alt': case 'peers-tls-std': case 'peers-tls-alt':
        return `1,${port},[]`;
      case 'service-clear-std': case 'service-clear-alt': case 'services': case 'services-alternate': case 'service':
        return name.startsWith('services') ? '' : `127.0.0.1:${port}`;
      case 'replicas': return ns.map((n) => `${n}:0,1,${bitmap}`).join(';');
      case 'replicas-all': return ns.map((n) => `${n}:1,${bitmap}`).join(';');
      case 'replicas-master': return ns.map((n) => `${n}:${bitmap}`).join(';');
      case 'cluster-name': return this.o.clusterName ?? 'null';
      case 'build': return '7.2.0.0';
      case 'version': return 'Aerospike Community Edition (mock)';
      case 'edition': return 'Aerospike Community Edition';
      case 'namespaces': return ns.join(';');
      case 'sets': return '';
      case 'statistics': return `objects=${this.store.records.size}`;
    }
    const m = /^truncate(-namespace)?:(.*)$/.exec(name);
    if (m) {
      const args = Object.fromEntries(m[2]!.split(';').map((kv) => kv.split('=') as [string, string]));
      const n = args.namespace;
      if (!n || !ns.includes(n)) return 'ERROR:20:namespace not found';
      for (const [k, r] of this.store.records)
        if (k.startsWith(`${n}\0`) && (args.set === undefined || r.set === args.set)) this.store.records.delete(k);
      return 'ok';
    }
    return undefined;
  }

  // ------------------------------------------------------------------- AS_MSG

  private async message(s: net.Socket, body: Buffer): Promise<void> {
    const r = new Reader(body);
    const headerSize = r.u8();
    if (headerSize !== MSG_HEADER_SIZE) throw new Error(`message header size ${headerSize}`);
    const info1 = r.u8(), info2 = r.u8(), info3 = r.u8();
    r.u8(); // info4
    r.u8(); // result code
    const gen = r.u32();
    r.u32(); // record ttl
    r.u32(); // transaction ttl (timeout)
    const nFields = r.u16();
    const nOps = r.u16();
    const fields = readFields(r, nFields);
    const ops = readOps(r, nOps);
    const compress = (info1 & INFO1_COMPRESS_RESPONSE) !== 0;
    const get = (t: number) => fields.find((f) => f.type === t)?.data;

    const kind: CommandKind = info1 & INFO1_BATCH_INDEX ? 'batch' : get(FIELD_DIGEST) ? 'single' : 'scan';
    this.served[kind]++;
    const send = (msgs: Buffer[]) => this.send(s, msgs, compress);
    const fail = (code: number) => send([msg({ result: code, info3: kind === 'single' ? 0 : INFO3_LAST })]);

    try {
      // Parse the whole request first: a malformed one is answered "parameter error".
      let reqs: { index: number; q: RecordRequest }[] = [];
      if (kind === 'batch') reqs = this.parseBatch(get(FIELD_BATCH_INDEX) ?? get(FIELD_BATCH_INDEX_WITH_SET), get(FIELD_FILTER_EXP));
      if (kind === 'single') reqs = [{ index: 0, q: {
        ns: str(get(FIELD_NAMESPACE)), set: get(FIELD_SET)?.toString('utf8'), digest: get(FIELD_DIGEST)!,
        info1, info2, info3, gen, filter: get(FIELD_FILTER_EXP), ops,
      } }];
      const target = kind === 'scan' ? 'scan' : reqs.some((x) => x.q.info2 & INFO2_WRITE) ? 'write' : 'read';

      const fault = this.takeFault((f) => (f.on ?? 'any') === 'any' || f.on === target);
      if (fault?.kind === 'close') {
        this.log(`fault: closing the connection instead of answering a ${target} (${kind})`);
        s.destroy();
        return;
      }
      if (fault?.kind === 'result' || (fault?.kind === 'record-result' && kind !== 'batch')) {
        this.log(`fault: answering a ${target} (${kind}) with result ${fault.code}`);
        await fail(fault.code);
        return;
      }
      if (kind === 'scan') return await this.scan(s, send, fields, info1, ops);
      if (kind === 'single') {
        const { result, bins, gen: g } = this.executeSafe(reqs[0]!.q);
        await send([msg({ result, gen: g, ops: result === RC.OK ? bins : undefined })]);
        return;
      }
      const out: Buffer[] = [];
      for (const { index, q } of reqs) {
        if (fault) { out.push(msg({ result: fault.code, index })); continue; }
        const res = this.executeSafe(q);
        out.push(msg({ result: res.result, index, gen: res.gen, ops: res.result === RC.OK ? res.bins : undefined }));
      }
      out.push(msg({ result: RC.OK, info3: INFO3_LAST }));
      this.log(`batch of ${reqs.length} ${target}s${fault ? ` (fault: every record answered ${fault.code})` : ''}`);
      await send(out);
    } catch (e) {
      if (!(e instanceof MockError)) throw e;
      this.log(`answering result ${e.code}: ${e.message}`);
      await fail(e.code);
    }
  }

  private executeSafe(q: RecordRequest): { result: number; bins?: Buffer[]; gen?: number } {
    try {
      return this.execute(q);
    } catch (e) {
      if (!(e instanceof MockError)) throw e;
      this.log(`record answered ${e.code}: ${e.message}`);
      return { result: e.code };
    }
  }

  /** Write messages in frames of at most ~256 KiB, waiting for the socket to drain. */
  private async send(s: net.Socket, msgs: Buffer[], compress: boolean): Promise<void> {
    let frame: Buffer[] = [];
    let size = 0;
    const flush = async () => {
      if (!frame.length || s.destroyed) return;
      let out = proto(TYPE_MSG, Buffer.concat(frame));
      if (compress) {
        const z = Buffer.alloc(8);
        z.writeBigUInt64BE(BigInt(out.length));
        out = proto(TYPE_COMPRESSED, Buffer.concat([z, zlib.deflateSync(out)]));
      }
      frame = [];
      size = 0;
      if (!s.write(out)) await new Promise<void>((r) => { s.once('drain', r); s.once('close', r); });
    };
    for (const m of msgs) {
      frame.push(m);
      size += m.length;
      if (size >= 256 * 1024) await flush();
    }
    await flush();
  }

  /** Run one record's read / write / delete against the store. */
  private execute(q: RecordRequest): { result: number; bins?: Buffer[]; gen?: number } {
    if (!this.store.namespaces.includes(q.ns)) return { result: RC.NAMESPACE_NOT_FOUND };
    if (q.digest?.length !== 20) throw new MockError(RC.PARAMETER, 'digest of 20 bytes expected');
    const k = Store.key(q.ns, q.digest);
    const rec = this.store.records.get(k);
    if (q.filter && rec && !evalFilter(q.filter, rec)) return { result: RC.FILTERED_OUT };

    if (q.info2 & INFO2_WRITE) {
      if (q.info2 & INFO2_DELETE || q.ops.some((o) => o.op === OP_DELETE)) {
        if (!rec) return { result: RC.KEY_NOT_FOUND };
        if (q.info2 & INFO2_GENERATION && rec.gen !== q.gen) return { result: RC.GENERATION };
        this.store.records.delete(k);
        return { result: RC.OK };
      }
      if (q.info2 & INFO2_CREATE_ONLY && rec) return { result: RC.KEY_EXISTS };
      if (q.info3 & (INFO3_UPDATE_ONLY | INFO3_REPLACE_ONLY) && !rec) return { result: RC.KEY_NOT_FOUND };
      if (q.info2 & INFO2_GENERATION && (rec?.gen ?? 0) !== q.gen) return { result: RC.GENERATION };
      if (q.info2 & INFO2_GENERATION_GT && q.gen <= (rec?.gen ?? 0)) return { result: RC.GENERATION };
      const replace = (q.info3 & (INFO3_CREATE_OR_REPLACE | INFO3_REPLACE_ONLY)) !== 0;
      const bins = new Map(replace ? [] : rec?.bins ?? []);
      const out: Buffer[] = [];
      for (const o of q.ops) {
        if (o.op === OP_WRITE) {
          if (o.type === P_NULL) bins.delete(o.name);
          else bins.set(o.name, { type: o.type, data: Buffer.from(o.data) });
          if (q.info2 & INFO2_RESPOND_ALL_OPS) out.push(binOp(o.name, undefined));
        } else if (o.op === OP_READ) {
          out.push(binOp(o.name, bins.get(o.name)));
        } else if (o.op !== OP_TOUCH) {
          throw new MockError(RC.PARAMETER, `operation ${o.op} not supported by the mock`);
        }
      }
      const gen = (rec?.gen ?? 0) + 1;
      if (bins.size === 0) this.store.records.delete(k);
      else this.store.records.set(k, { set: q.set ?? rec?.set ?? '', digest: Buffer.from(q.digest), bins, gen });
      return { result: RC.OK, bins: out, gen };
    }

    if (!rec) return { result: RC.KEY_NOT_FOUND };
    return { result: RC.OK, bins: this.readBins(rec, q.info1, q.ops), gen: rec.gen };
  }

  private readBins(rec: StoredRecord, info1: number, ops: Op[]): Buffer[] {
    if (info1 & INFO1_GET_NOBINDATA) return [];
    if (info1 & INFO1_GET_ALL || ops.length === 0) return [...rec.bins].map(([n, p]) => binOp(n, p));
    const out: Buffer[] = [];
    for (const o of ops) {
      if (o.op !== OP_READ) throw new MockError(RC.PARAMETER, `operation ${o.op} in a read not supported by the mock`);
      const p = rec.bins.get(o.name);
      if (p) out.push(binOp(o.name, p));
    }
    return out;
  }

  // ------------------------------------------------------------------- batch

  /** The records of a batch-index field ("batch-any" format, or the older read-only one). */
  private parseBatch(b: Buffer | undefined, filter: Buffer | undefined): { index: number; q: RecordRequest }[] {
    if (!b) throw new MockError(RC.PARAMETER, 'batch without a batch-index field');
    const r = new Reader(b);
    const n = r.u32();
    r.u8(); // flags: allow inline, respond all keys
    let prev: Omit<RecordRequest, 'digest'> | undefined;
    const reqs: { index: number; q: RecordRequest }[] = [];
    for (let i = 0; i < n; i++) {
      const index = r.u32();
      const digest = r.bytes(20);
      const type = r.u8();
      if (type === BATCH_MSG_REPEAT) {
        if (!prev) throw new MockError(RC.PARAMETER, 'batch repeat without a previous record');
        reqs.push({ index, q: { ...prev, digest } });
        continue;
      }
      let info1 = 0, info2 = 0, info3 = 0, gen = 0;
      if (type === 0) {
        // Old batch protocol: read attributes only.
        info1 = r.u8();
      } else {
        if (type & BATCH_MSG_INFO) { info1 = r.u8(); info2 = r.u8(); info3 = r.u8(); }
        if (type & BATCH_MSG_INFO4) r.u8();
        if (type & BATCH_MSG_GEN) gen = r.u16();
        if (type & BATCH_MSG_TTL) r.u32();
      }
      const nFields = r.u16();
      const nOps = r.u16();
      const fields = readFields(r, nFields);
      const ops = readOps(r, nOps);
      const get = (t: number) => fields.find((f) => f.type === t)?.data;
      prev = {
        ns: str(get(FIELD_NAMESPACE)), set: get(FIELD_SET)?.toString('utf8'),
        info1, info2, info3, gen, filter: get(FIELD_FILTER_EXP) ?? filter, ops,
      };
      reqs.push({ index, q: { ...prev, digest } });
    }
    return reqs;
  }

  // ------------------------------------------------------------------- scan

  private async scan(s: net.Socket, send: (m: Buffer[]) => Promise<void>, fields: Field[], info1: number, ops: Op[]): Promise<void> {
    const get = (t: number) => fields.find((f) => f.type === t)?.data;
    const ns = str(get(FIELD_NAMESPACE));
    const set = get(FIELD_SET)?.toString('utf8');
    if (!this.store.namespaces.includes(ns)) throw new MockError(RC.NAMESPACE_NOT_FOUND, `namespace ${ns}`);
    if (!get(FIELD_TASK_ID) && !get(FIELD_PID_ARRAY) && !get(FIELD_DIGEST_ARRAY))
      throw new MockError(RC.PARAMETER, 'not a scan: no digest, task id or partition fields');
    const filter = get(FIELD_FILTER_EXP);
    // Which partitions, and from where: all, a list of ids, or (resuming) after a digest.
    let parts: Set<number> | undefined;
    const after = new Map<number, Buffer>();
    const pids = get(FIELD_PID_ARRAY);
    const dig = get(FIELD_DIGEST_ARRAY);
    if (pids || dig) {
      parts = new Set();
      if (pids) for (let i = 0; i + 1 < pids.length; i += 2) parts.add(pids.readUInt16LE(i));
      if (dig) for (let i = 0; i + 20 <= dig.length; i += 20) {
        const d = dig.subarray(i, i + 20);
        parts.add(partitionId(d));
        after.set(partitionId(d), d);
      }
    }
    const maxField = get(FIELD_MAX_RECORDS);
    const max = maxField ? Number(maxField.readBigUInt64BE(0)) : Infinity;

    const matches: StoredRecord[] = [];
    for (const [k, rec] of this.store.records) {
      if (!k.startsWith(`${ns}\0`)) continue;
      if (set !== undefined && set !== '' && rec.set !== set) continue;
      const pid = partitionId(rec.digest);
      if (parts && !parts.has(pid)) continue;
      const a = after.get(pid);
      if (a && Buffer.compare(rec.digest, a) <= 0) continue;
      matches.push(rec);
    }
    // Partition by partition, in digest order, as a server walks its partition trees.
    matches.sort((x, y) => partitionId(x.digest) - partitionId(y.digest) || Buffer.compare(x.digest, y.digest));
    const nsField = field(FIELD_NAMESPACE, Buffer.from(ns, 'utf8'));
    let batch: Buffer[] = [];
    let sent = 0;
    for (const rec of matches) {
      if (sent >= max) break;
      if (filter && !evalFilter(filter, rec)) continue;
      batch.push(msg({
        result: RC.OK, gen: rec.gen,
        fields: [nsField, field(FIELD_SET, Buffer.from(rec.set, 'utf8')), field(FIELD_DIGEST, rec.digest)],
        ops: this.readBins(rec, info1, ops),
      }));
      sent++;
      if (batch.length >= 512) { await send(batch); batch = []; if (s.destroyed) return; }
    }
    batch.push(msg({ result: RC.OK, info3: INFO3_LAST }));
    this.log(`scan of ${ns}/${set ?? '*'}: ${sent} records`);
    await send(batch);
  }
}

function str(b: Buffer | undefined): string {
  if (!b) throw new MockError(RC.PARAMETER, 'namespace field missing');
  return b.toString('utf8');
}

// --------------------------------------------------------------------- child-process harness

export interface MockAerospike {
  port: number;
  namespaces: string[];
  /** An aerospike:// URI for this mock. */
  uri(namespace?: string, set?: string): string;
  /** Arm a fault (or clear them all). */
  fault(f: Fault): Promise<void>;
  /** Commands served since the mock process started. */
  served(): Promise<MockAerospikeServer['served']>;
  /** Stop the process (SIGTERM) and wait for its exit. */
  stop(): Promise<void>;
  /** Stop and start again on the same port (the records are gone, as with an in-memory namespace). */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT: connections stay open, nothing is answered. */
  pause(): void;
  resume(): void;
  readonly log: string;
}

const SELF = fileURLToPath(import.meta.url);

export async function startMockAerospike(t: TeardownContext, o: { namespaces?: string[]; verbose?: boolean } = {}): Promise<MockAerospike> {
  const port = await freePort();
  const namespaces = o.namespaces ?? ['test'];
  let child: ChildProcess | undefined;
  let output = '';
  let seq = 0;
  const pending = new Map<number, (v: unknown) => void>();

  const alive = () => !!child && child.exitCode === null && child.signalCode === null;
  const start = async () => {
    output = '';
    const args = ['--port', String(port), ...namespaces.flatMap((n) => ['--namespace', n]), ...(o.verbose ? ['--verbose'] : [])];
    const c = fork(SELF, args, { execArgv: ['--import=tsx'], stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    child = c;
    c.stdout!.on('data', (d) => { output = (output + d).slice(-8000); });
    c.stderr!.on('data', (d) => { output = (output + d).slice(-8000); if (o.verbose) process.stderr.write(d); });
    c.on('message', (m: { id?: number; value?: unknown }) => {
      if (m.id !== undefined) { pending.get(m.id)?.(m.value); pending.delete(m.id); }
    });
    await new Promise<void>((resolve, reject) => {
      const onMsg = (m: { ready?: boolean }) => { if (m.ready) { c.off('exit', onExit); resolve(); } };
      const onExit = () => reject(new Error(`the mock Aerospike server exited before listening: ${output}`));
      c.on('message', onMsg);
      c.once('exit', onExit);
    });
  };
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    const c = child;
    if (!c || !alive()) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    try { process.kill(c.pid!, 'SIGCONT'); } catch { /* gone */ }
    c.kill(signal);
    const timer = setTimeout(() => c.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };
  const call = (cmd: unknown): Promise<unknown> => {
    if (!alive()) return Promise.reject(new Error('the mock Aerospike server is not running'));
    const id = ++seq;
    return new Promise((resolve) => { pending.set(id, resolve); child!.send({ id, cmd }); });
  };

  t.teardown(() => stop('SIGKILL'));
  await start();
  return {
    port,
    namespaces,
    uri: (ns = namespaces[0]!, set?: string) => `aerospike://127.0.0.1:${port}/${ns}${set ? `/${set}` : ''}`,
    fault: async (f) => { await call({ fault: f }); },
    served: async () => (await call({ served: true })) as MockAerospikeServer['served'],
    stop: () => stop(),
    restart: async () => { await stop(); await start(); },
    pause: () => { if (alive()) freezeProcess(child!.pid!); },
    resume: () => { if (alive()) child!.kill('SIGCONT'); },
    get log() { return output; },
  };
}

async function main(argv: string[]): Promise<void> {
  let port = 3000;
  const namespaces: string[] = [];
  let verbose = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') port = Number(argv[++i]);
    else if (a === '--namespace') namespaces.push(argv[++i]!);
    else if (a === '--verbose') verbose = true;
    else throw new Error(`unknown argument '${a}' (use --port N, --namespace NAME (repeatable), --verbose)`);
  }
  const server = new MockAerospikeServer({ port, namespaces: namespaces.length ? namespaces : undefined, verbose });
  await server.listen();
  process.on('SIGTERM', () => { void server.close().then(() => process.exit(0)); });
  if (process.send) {
    process.on('message', (m: { id: number; cmd: { fault?: Fault; served?: boolean } }) => {
      if (m.cmd.fault) server.setFault(m.cmd.fault);
      process.send!({ id: m.id, value: m.cmd.served ? server.served : true });
    });
    process.on('disconnect', () => process.exit(0));
    process.send({ ready: true });
  } else {
    console.log(`mock Aerospike server listening on 127.0.0.1:${port} (namespaces: ${server.store.namespaces.join(', ')})`);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === fs.realpathSync(process.argv[1])) {
  main(process.argv.slice(2)).catch((e) => { console.error(e); process.exit(1); });
}
