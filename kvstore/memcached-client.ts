/**
 * A minimal memcached binary-protocol client for one server, built for batches: a
 * batch is many quiet requests (GETQ / SETQ / DELETEQ: the server answers only hits
 * and errors) followed by one NOOP, written in one socket write; the NOOP's answer
 * closes the batch. Batches pipeline on one connection and complete in order.
 *
 * Why our own: memjs sends one request per key and waits for each reply (no multi-get
 * with quiet commands), which costs one round trip per page.
 *
 * Failure semantics: connect timeout; a per-batch timeout rejects that batch with
 * STORE_UNAVAILABLE but keeps the connection (see send); a closed connection fails every
 * pending batch, and the next batch connects again.
 */
import net from 'node:net';
import { ElasticmemError, unavailable } from './errors.ts';
import { HeldRequests } from './held-requests.ts';
import type { NetTimeouts } from './raw.ts';
import { arenaOnRead } from './read-arena.ts';

const REQ = 0x80;
const RES = 0x81;
const OP_GETQ = 0x09;
const OP_NOOP = 0x0a;
const OP_SETQ = 0x11;
const OP_DELETEQ = 0x14;
const HDR = 24;
const EMPTY = Buffer.alloc(0);

const ST_OK = 0;
const ST_NOT_FOUND = 1;
const ST_TOO_LARGE = 3;
const ST_NO_MEMORY = 0x82;

interface Batch {
  noop: number; // opaque of the closing NOOP
  onReply(opcode: number, status: number, opaque: number, value: Buffer): void;
  resolve(): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  /** Timed out: replies are consumed and dropped. */
  abandoned: boolean;
}

export class McConn {
  private sock: net.Socket | null = null;
  private connecting: Promise<net.Socket> | null = null;
  private queue: Batch[] = [];
  /** Sent once the timed-out batches at the head of `queue` are answered. */
  private readonly held = new HeldRequests();
  private buf: Buffer = EMPTY;
  private opaque = 1;
  private closed = false;

  constructor(readonly host: string, readonly port: number, private readonly t: NetTimeouts) {}

  get where(): string { return `memcached ${this.host}:${this.port}`; }

  /** Fetch values: out[idx[i]] = value of keys[i] (null when missing). */
  async getMany(keys: Buffer[], idx: number[], out: (Buffer | null)[]): Promise<void> {
    const base = this.take(keys.length + 1);
    let size = HDR * (keys.length + 1);
    for (const k of keys) size += k.length;
    const req = Buffer.allocUnsafe(size);
    let o = 0;
    for (let i = 0; i < keys.length; i++) o = writeReq(req, o, OP_GETQ, keys[i]!, 0, null, (base + i) >>> 0);
    writeReq(req, o, OP_NOOP, null, 0, null, (base + keys.length) >>> 0);
    for (const i of idx) out[i] = null;
    let err: Error | undefined;
    await this.send(req, (base + keys.length) >>> 0, (_op, status, opaque, value) => {
      const i = (opaque - base) >>> 0;
      if (i >= keys.length) return;
      if (status === ST_OK) out[idx[i]!] = value;
      else if (status !== ST_NOT_FOUND) err ??= this.statusError(status, 'get');
    });
    if (err) throw err;
  }

  async setMany(keys: Buffer[], values: Buffer[]): Promise<void> {
    const base = this.take(keys.length + 1);
    let size = HDR * (keys.length + 1);
    for (let i = 0; i < keys.length; i++) size += 8 + keys[i]!.length + values[i]!.length;
    const req = Buffer.allocUnsafe(size);
    let o = 0;
    for (let i = 0; i < keys.length; i++) o = writeReq(req, o, OP_SETQ, keys[i]!, 8, values[i]!, (base + i) >>> 0);
    writeReq(req, o, OP_NOOP, null, 0, null, (base + keys.length) >>> 0);
    let err: Error | undefined;
    await this.send(req, (base + keys.length) >>> 0, (_op, status) => { if (status !== ST_OK) err ??= this.statusError(status, 'set'); });
    if (err) throw err;
  }

  /**
   * setMany of values written in place: value i (of `size` bytes) is written by
   * fill(idx[i], dst) straight into the request (no value buffer, one copy per page).
   * Every fill runs here, before anything is sent; the returned function sends the
   * request (so a caller spreading a batch over servers sends nothing if a fill throws).
   */
  prepareSetInto(keys: Buffer[], idx: readonly number[], size: number, fill: (i: number, dst: Buffer) => void): () => Promise<void> {
    let total = HDR * (keys.length + 1);
    for (let i = 0; i < keys.length; i++) total += 8 + keys[i]!.length + size;
    const req = Buffer.allocUnsafe(total);
    let o = 0;
    const at: number[] = new Array(keys.length);
    for (let i = 0; i < keys.length; i++) {
      o = writeReq(req, o, OP_SETQ, keys[i]!, 8, null, 0, size);
      at[i] = o - HDR - 8 - keys[i]!.length;
      fill(idx[i]!, req.subarray(o, o + size));
      o += size;
    }
    const end = o;
    return async () => {
      // Opaques are taken when sent (requests go out in the order they are numbered).
      const base = this.take(keys.length + 1);
      for (let i = 0; i < keys.length; i++) req.writeUInt32BE((base + i) >>> 0, at[i]! + 12);
      writeReq(req, end, OP_NOOP, null, 0, null, (base + keys.length) >>> 0);
      let err: Error | undefined;
      await this.send(req, (base + keys.length) >>> 0, (_op, status) => { if (status !== ST_OK) err ??= this.statusError(status, 'set'); });
      if (err) throw err;
    };
  }

  async deleteMany(keys: Buffer[]): Promise<void> {
    const base = this.take(keys.length + 1);
    let size = HDR * (keys.length + 1);
    for (const k of keys) size += k.length;
    const req = Buffer.allocUnsafe(size);
    let o = 0;
    for (let i = 0; i < keys.length; i++) o = writeReq(req, o, OP_DELETEQ, keys[i]!, 0, null, (base + i) >>> 0);
    writeReq(req, o, OP_NOOP, null, 0, null, (base + keys.length) >>> 0);
    let err: Error | undefined;
    await this.send(req, (base + keys.length) >>> 0, (_op, status) => {
      if (status !== ST_OK && status !== ST_NOT_FOUND) err ??= this.statusError(status, 'delete');
    });
    if (err) throw err;
  }

  close(): void {
    this.closed = true;
    this.fail(new ElasticmemError(`${this.where}: the store is closed`, 'STORE_CLOSED'));
  }

  private take(n: number): number {
    const base = this.opaque;
    this.opaque = (this.opaque + n) >>> 0;
    return base;
  }

  private statusError(status: number, op: string): ElasticmemError {
    if (status === ST_NO_MEMORY) return new ElasticmemError(`store full: ${this.where} is out of memory (${op}); give it more memory (-m) or add servers`, 'STORE_FULL');
    if (status === ST_TOO_LARGE) return new ElasticmemError(`${this.where}: value too large (${op}); raise the item size limit (-I)`, 'STORE_ERROR');
    return new ElasticmemError(`${this.where}: ${op} failed with status 0x${status.toString(16)}`, 'STORE_ERROR');
  }

  private async send(req: Buffer, noop: number, onReply: Batch['onReply'], timeoutMs = this.t.opTimeoutMs): Promise<void> {
    if (this.closed) throw new ElasticmemError(`${this.where}: the store is closed`, 'STORE_CLOSED');
    if (this.sock && (this.held.size > 0 || this.queue[0]?.abandoned)) {
      // Wedged (held-requests.ts): sent once the server answers again.
      return new Promise<void>((resolve, reject) => this.held.hold(this.where, this.t.opTimeoutMs,
        (msLeft) => { this.send(req, noop, onReply, msLeft).then(resolve, reject); },
        reject));
    }
    const sock = this.sock ?? (await this.connect());
    return new Promise<void>((resolve, reject) => {
      // On timeout the batch is rejected but stays queued, and the connection is kept:
      // its replies are still consumed in order, and a later write of the same page
      // (same server, same connection) can never be overtaken by this older one sitting
      // in a frozen server's socket buffer, as it could on a fresh connection.
      const b: Batch = {
        noop, onReply, resolve, reject, abandoned: false,
        timer: setTimeout(() => {
          b.abandoned = true;
          reject(unavailable(`${this.where} did not answer within ${this.t.opTimeoutMs} ms`));
        }, timeoutMs),
      };
      this.queue.push(b);
      sock.write(req);
    });
  }

  private connect(): Promise<net.Socket> {
    if (this.connecting) return this.connecting;
    this.connecting = new Promise<net.Socket>((resolve, reject) => {
      // Reads go straight to the parser (no 'data' events); see ReadArena.
      let sock: net.Socket | undefined;
      const onread = arenaOnRead((chunk) => {
        if (this.sock === sock) this.onData(chunk);
      });
      const s = net.connect({ host: this.host, port: this.port, noDelay: true, onread });
      sock = s;
      const timer = setTimeout(() => {
        s.destroy();
        reject(unavailable(`cannot connect to ${this.where} within ${this.t.connectTimeoutMs} ms`));
      }, this.t.connectTimeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.setKeepAlive(true, 10_000);
        this.sock = s;
        this.buf = EMPTY;
        s.on('close', () => { if (this.sock === s) this.fail(unavailable(`${this.where} closed the connection`)); });
        resolve(s);
      });
      s.on('error', (e) => {
        clearTimeout(timer);
        if (this.sock === s) this.fail(unavailable(this.where, e));
        else reject(unavailable(`cannot connect to ${this.where} (is memcached running and reachable?)`, e));
      });
    }).finally(() => { this.connecting = null; });
    return this.connecting;
  }

  /** Drop the connection and fail every pending batch. */
  private fail(e: Error): void {
    const s = this.sock;
    this.sock = null;
    this.buf = EMPTY;
    if (s) s.destroy();
    const q = this.queue;
    this.queue = [];
    this.held.failAll(e);
    for (const b of q) { clearTimeout(b.timer); if (!b.abandoned) b.reject(e); }
  }

  private onData(chunk: Buffer): void {
    const rest = this.buf;
    if (rest.length && !(rest.buffer === chunk.buffer && rest.byteOffset + rest.length === chunk.byteOffset)) {
      // The reply before this read ended in another arena: copy just enough of this read
      // to complete that one reply (not the whole read), then go on in this read's memory.
      const need = rest.length >= HDR ? HDR + rest.readUInt32BE(8) : HDR;
      const k = Math.min(chunk.length, need - rest.length);
      const s = this.sock;
      this.parse(Buffer.concat([rest, chunk.subarray(0, k)]));
      if (k < chunk.length && this.sock === s) this.onData(chunk.subarray(k));
      return;
    }
    this.parse(rest.length ? Buffer.from(rest.buffer, rest.byteOffset, rest.length + chunk.length) : chunk);
  }

  /** Parse every complete reply in buf; an incomplete tail is kept for the next read. */
  private parse(buf: Buffer): void {
    let o = 0;
    while (buf.length - o >= HDR) {
      if (buf[o] !== RES) {
        this.fail(unavailable(`${this.where} sent a malformed reply (magic 0x${buf[o]!.toString(16)})`));
        return;
      }
      const body = buf.readUInt32BE(o + 8);
      if (buf.length - o < HDR + body) break;
      const opcode = buf[o + 1]!;
      const keyLen = buf.readUInt16BE(o + 2);
      const extLen = buf[o + 4]!;
      const status = buf.readUInt16BE(o + 6);
      const opaque = buf.readUInt32BE(o + 12);
      const head = this.queue[0];
      if (!head) {
        this.fail(unavailable(`${this.where} sent an unexpected reply`));
        return;
      }
      // A reply body is extras (GETQ: 4-byte flags), then the key (none for GETQ), then the value.
      const value = buf.subarray(o + HDR + extLen + keyLen, o + HDR + body);
      o += HDR + body;
      if (opcode === OP_NOOP && opaque === head.noop) {
        this.queue.shift();
        if (this.held.size > 0 && !this.queue[0]?.abandoned) this.held.release();
        clearTimeout(head.timer);
        if (!head.abandoned) head.resolve();
      } else if (!head.abandoned) {
        head.onReply(opcode, status, opaque, value);
      }
    }
    this.buf = o === buf.length ? EMPTY : buf.subarray(o);
  }
}

/** One request header, extras, key and value; `valueLen` given without a value: the caller writes the value after. */
function writeReq(b: Buffer, o: number, op: number, key: Buffer | null, extras: number, value: Buffer | null, opaque: number, valueLen = 0): number {
  const kl = key ? key.length : 0;
  const vl = value ? value.length : valueLen;
  b[o] = REQ;
  b[o + 1] = op;
  b.writeUInt16BE(kl, o + 2);
  b[o + 4] = extras;
  b[o + 5] = 0;
  b.writeUInt16BE(0, o + 6);
  b.writeUInt32BE(extras + kl + vl, o + 8);
  b.writeUInt32BE(opaque, o + 12);
  b.writeUInt32BE(0, o + 16);
  b.writeUInt32BE(0, o + 20);
  o += HDR;
  if (extras) { b.fill(0, o, o + extras); o += extras; } // flags 0, expiry 0 (never)
  if (key) o += key.copy(b, o);
  if (value) o += value.copy(b, o);
  return o;
}

/**
 * `lru_crawler metadump hash` on a separate text-protocol connection: every key the
 * server holds with its size. memcached has no other way to enumerate keys; used only
 * by list/usage/dropVm (recovery, reporting), never on the fault path.
 * The hash-table walk (memcached 1.6.10+) sees every item; the older `metadump all`
 * walks the LRUs and misses items the LRU maintainer moves meanwhile (we saw it miss
 * pages that had just been read), so it is only the fallback for old servers.
 */
export async function metadump(host: string, port: number, t: NetTimeouts): Promise<{ key: string; size: number }[]> {
  try {
    return await metadumpOnce(host, port, t, 'hash');
  } catch (e) {
    if ((e as ElasticmemError).code !== 'STORE_ERROR') throw e;
    return metadumpOnce(host, port, t, 'all');
  }
}

function metadumpOnce(host: string, port: number, t: NetTimeouts, mode: 'hash' | 'all'): Promise<{ key: string; size: number }[]> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    const out: { key: string; size: number }[] = [];
    let rest = '';
    let done = false;
    const finish = (e?: Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      if (e) reject(e); else resolve(out);
    };
    const timer = setTimeout(() => finish(unavailable(`memcached ${host}:${port}: metadump did not finish within ${t.opTimeoutMs * 6} ms`)), t.opTimeoutMs * 6);
    s.setEncoding('latin1');
    s.once('connect', () => s.write(`lru_crawler metadump ${mode}\r\n`));
    s.on('data', (d: string) => {
      // Key lines end in "\n", the final END in "\r\n".
      const lines = (rest + d).split('\n');
      rest = lines.pop()!;
      for (const raw of lines) {
        const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
        if (line === 'END') return finish();
        if (line.startsWith('BUSY') || line.startsWith('ERROR') || line.startsWith('CLIENT_ERROR') || line.startsWith('SERVER_ERROR'))
          return finish(new ElasticmemError(`memcached ${host}:${port}: lru_crawler metadump: ${line}`, line.startsWith('BUSY') ? 'STORE_UNAVAILABLE' : 'STORE_ERROR'));
        const m = /^key=(\S+) .*\bsize=(\d+)/.exec(line);
        if (m) out.push({ key: decodeURIComponent(m[1]!), size: Number(m[2]) });
      }
    });
    s.once('error', (e) => finish(unavailable(`memcached ${host}:${port}`, e)));
    s.once('close', () => finish(unavailable(`memcached ${host}:${port} closed the connection during metadump`)));
  });
}
