/**
 * A lean RESP2 client for one Redis server: the hot path of `redis://`.
 *
 * Why not only the `redis` package: measured on this machine at batch 16, one MSET or
 * MGET of 16 × 4 KiB through node-redis cost about twice what redis-benchmark needs for
 * the same 16 commands in one round trip (its generic command queue, argument
 * transformation and reply decoding per call). Here a batch is encoded into a single
 * Buffer and written with one write; replies are decoded by a streaming parser that
 * hands out bulk values without copying when they sit inside one socket chunk. The
 * slot routing and MOVED/ASK handling of Redis Cluster are in redis-cluster.ts.
 *
 * Ordering and timeouts: replies come back in command order on one connection. A command
 * that gets no reply within the op timeout is rejected (STORE_UNAVAILABLE) but stays
 * queued: the connection is kept, so a later write of the same page can never be
 * overtaken by an older one still sitting in a frozen server's socket buffer. Only a
 * closed connection fails every pending command; the next command reconnects.
 */
import net from 'node:net';
import tls from 'node:tls';
import { ElasticmemError, unavailable, describe } from './errors.ts';
import { HeldRequests } from './held-requests.ts';
import type { NetTimeouts } from './raw.ts';
import { arenaOnRead } from './read-arena.ts';

export type RespValue = string | number | Buffer | null | RespValue[] | RespError;

export class RespError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ErrorReply';
  }
}

export interface RespOptions {
  host: string;
  port: number;
  tls?: boolean;
  /** PEM CA certificate(s) to trust for TLS, besides the system's. */
  ca?: Buffer;
  username?: string;
  password?: string;
  db?: number;
}

interface Pending {
  resolve(v: RespValue): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout | undefined;
  /** Timed out: its reply is still consumed (in order) and dropped. */
  abandoned: boolean;
}

const EMPTY = Buffer.alloc(0);
/** Largest frame kept for reuse (a batch of 256 enveloped pages is about 1.05 MiB). */
const MAX_FRAME = 2 * 1024 * 1024;
/**
 * An argument written in place: `size` bytes that `fill(dst)` writes straight into the
 * command's frame (dst.length === size), while the command is encoded. Saves a value
 * buffer of its own and a copy per value (the page envelope encodes into the frame).
 */
export interface InPlaceArg {
  readonly size: number;
  fill(dst: Buffer): void;
}

export type RespArg = string | Buffer | InPlaceArg;

/** Encode one command as a RESP array of bulk strings, in one Buffer (into `into` when it is big enough). */
export function encodeCommand(args: readonly RespArg[], into?: Buffer): Buffer {
  let size = 1 + digits(args.length) + 2;
  const lens: number[] = new Array(args.length);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const n = typeof a === 'string' ? Buffer.byteLength(a) : a instanceof Uint8Array ? a.length : a.size;
    lens[i] = n;
    size += 1 + digits(n) + 2 + n + 2;
  }
  const b = into && into.length >= size ? into.subarray(0, size) : Buffer.allocUnsafe(size);
  let o = writeHeader(b, 0, 42, args.length); // '*'
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const n = lens[i]!;
    o = writeHeader(b, o, 36, n); // '$'
    if (typeof a === 'string') o += b.write(a, o);
    else if (a instanceof Uint8Array) o += a.copy(b, o);
    else {
      a.fill(b.subarray(o, o + n));
      o += n;
    }
    b[o++] = 13;
    b[o++] = 10;
  }
  return b;
}

function digits(n: number): number {
  return n < 10 ? 1 : n < 100 ? 2 : n < 1000 ? 3 : n < 10000 ? 4 : String(n).length;
}

/** `<type><n>\r\n` at b[o] (byte by byte: no string per argument); returns the new offset. */
function writeHeader(b: Buffer, o: number, type: number, n: number): number {
  b[o++] = type;
  const d = digits(n);
  for (let k = o + d - 1; k >= o; k--, n = Math.floor(n / 10)) b[k] = 48 + (n % 10);
  o += d;
  b[o++] = 13;
  b[o++] = 10;
  return o;
}

/**
 * Streaming RESP2 decoder: feed chunks, get complete replies through `onReply`.
 * Nested arrays (SCAN) are supported. Bulk values are zero-copy views into the chunks
 * whenever their bytes are contiguous in memory: inside one chunk, or spread over
 * chunks that follow each other in one ArrayBuffer (RespClient reads into an arena, so
 * a value split between two reads is still one view). Only a value split between
 * unrelated buffers is copied. Fed chunks must therefore never be overwritten.
 */
export class RespParser {
  private line = '';
  /** A bulk value split across chunks: its length, bytes received so far. */
  private bulkLen = -1;
  private bulkFill = 0;
  /** While contiguous: where its bytes start, and where the next chunk must start. */
  private bulkAb: ArrayBufferLike | null = null;
  private bulkStart = 0;
  private bulkNext = 0;
  /** Once not contiguous: the copy being filled. */
  private bulkCopy: Buffer | null = null;
  private skip = 0; // CRLF after a bulk still to skip
  private stack: { items: RespValue[]; n: number }[] = [];

  constructor(private readonly onReply: (v: RespValue) => void) {}

  reset(): void {
    this.line = '';
    this.bulkLen = -1;
    this.bulkAb = null;
    this.bulkCopy = null;
    this.skip = 0;
    this.stack = [];
  }

  /** A bulk value of n bytes starts at c[pos] and runs past the end of c. */
  private startBulk(c: Buffer, pos: number, n: number): void {
    this.bulkLen = n;
    this.bulkFill = c.length - pos;
    this.bulkAb = c.buffer;
    this.bulkStart = c.byteOffset + pos;
    this.bulkNext = c.byteOffset + c.length;
    this.bulkCopy = null;
  }

  /** Continue a split bulk value with the start of c; returns how many bytes of c it took. */
  private continueBulk(c: Buffer): number {
    const k = Math.min(this.bulkLen - this.bulkFill, c.length);
    if (this.bulkCopy === null && (c.buffer !== this.bulkAb || c.byteOffset !== this.bulkNext)) {
      // Not contiguous with what came before: copy from here on.
      this.bulkCopy = Buffer.allocUnsafe(this.bulkLen);
      Buffer.from(this.bulkAb!, this.bulkStart, this.bulkFill).copy(this.bulkCopy, 0);
      this.bulkAb = null;
    }
    if (this.bulkCopy !== null) c.copy(this.bulkCopy, this.bulkFill, 0, k);
    this.bulkFill += k;
    this.bulkNext += k;
    if (this.bulkFill === this.bulkLen) {
      const v = this.bulkCopy ?? Buffer.from(this.bulkAb!, this.bulkStart, this.bulkLen);
      this.bulkLen = -1;
      this.bulkAb = null;
      this.bulkCopy = null;
      this.skip = 2;
      this.emit(v);
    }
    return k;
  }

  feed(c: Buffer): void {
    let pos = 0;
    const len = c.length;
    if (this.bulkLen >= 0) pos = this.continueBulk(c);
    while (pos < len) {
      if (this.skip) {
        const k = Math.min(this.skip, len - pos);
        this.skip -= k;
        pos += k;
        continue;
      }
      // Fast path: a '$' or '*' header wholly inside this chunk, parsed from the bytes.
      const t0 = c[pos]!;
      if (!this.line && (t0 === 36 || t0 === 42)) {
        let q = pos + 1;
        let neg = false;
        if (c[q] === 45) { neg = true; q++; }
        let n = 0;
        while (q < len && c[q]! >= 48 && c[q]! <= 57) n = n * 10 + c[q++]! - 48;
        if (q + 1 < len && c[q] === 13 && c[q + 1] === 10) {
          pos = q + 2;
          if (neg) { this.emit(null); continue; }
          if (t0 === 42) {
            if (n === 0) this.emit([]);
            else this.stack.push({ items: [], n });
            continue;
          }
          if (len - pos >= n + 2) {
            const v = c.subarray(pos, pos + n);
            pos += n + 2;
            this.emit(v);
          } else if (len - pos >= n) {
            // The value is here, (part of) its CRLF is not.
            const v = c.subarray(pos, pos + n);
            this.skip = 2 - (len - pos - n);
            pos = len;
            this.emit(v);
          } else {
            this.startBulk(c, pos, n);
            pos = len;
          }
          continue;
        }
        // Header split across chunks: the general path below.
      }
      const nl = c.indexOf(10, pos);
      if (nl < 0) {
        this.line += c.toString('latin1', pos, len);
        return;
      }
      let line: string;
      if (this.line) {
        line = this.line + c.toString('latin1', pos, nl - 1 >= pos ? nl - 1 : pos);
        if (nl === pos) line = line.slice(0, -1); // the CR was at the end of the previous chunk
        this.line = '';
      } else {
        line = c.toString('latin1', pos, nl - 1);
      }
      pos = nl + 1;
      const type = line.charCodeAt(0);
      const rest = line.slice(1);
      switch (type) {
        case 43: // '+'
          this.emit(rest);
          break;
        case 45: // '-'
          this.emit(new RespError(rest));
          break;
        case 58: // ':'
          this.emit(Number(rest));
          break;
        case 36: { // '$'
          const n = Number(rest);
          if (n < 0) { this.emit(null); break; }
          if (len - pos >= n) {
            // Whole value in this chunk: a view, no copy (its CRLF may follow in the next).
            const v = c.subarray(pos, pos + n);
            const crlf = Math.min(2, len - pos - n);
            pos += n + crlf;
            this.skip = 2 - crlf;
            this.emit(v);
          } else {
            this.startBulk(c, pos, n);
            pos = len;
          }
          break;
        }
        case 42: { // '*'
          const n = Number(rest);
          if (n < 0) this.emit(null);
          else if (n === 0) this.emit([]);
          else this.stack.push({ items: [], n });
          break;
        }
        default:
          throw new Error(`malformed RESP reply line '${line.slice(0, 40)}'`);
      }
    }
  }

  private emit(v: RespValue): void {
    for (;;) {
      const top = this.stack[this.stack.length - 1];
      if (!top) { this.onReply(v); return; }
      top.items.push(v);
      if (top.items.length < top.n) return;
      this.stack.pop();
      v = top.items;
    }
  }
}

export class RespClient {
  private sock: net.Socket | null = null;
  private connecting: Promise<net.Socket> | null = null;
  /** Commands awaiting their reply, oldest at `head`; answered slots are cleared (see onReply). */
  private queue: (Pending | undefined)[] = [];
  private head = 0;
  private closed = false;
  private readonly parser = new RespParser((v) => this.onReply(v));
  private frame: Buffer = Buffer.allocUnsafe(64 * 1024);
  private frameFree = true;
  /** Sent once the timed-out commands at the head of `queue` are answered. */
  private readonly held = new HeldRequests();

  constructor(readonly o: RespOptions, private readonly t: NetTimeouts) {}

  get where(): string { return `redis ${this.o.host}:${this.o.port}`; }

  /** Connect now (openStore reports an unreachable server at once). */
  async connect(): Promise<void> {
    await (this.sock ?? this.open());
  }

  /**
   * Send one command; resolves with its reply (a Redis error reply rejects as RespError).
   * The arguments are encoded (in-place ones filled) before send returns, on every path:
   * callers may reuse their buffers at once, and a throwing fill throws here, unsent.
   */
  send(args: readonly RespArg[]): Promise<RespValue> {
    if (this.closed) return Promise.reject(new ElasticmemError(`${this.where}: the store is closed`, 'STORE_CLOSED'));
    const sock = this.sock;
    if (sock && (this.held.size > 0 || this.queue[this.head]?.abandoned)) {
      // Wedged (held-requests.ts): encoded now, sent once the server answers again.
      const frame = encodeCommand(args);
      return new Promise<RespValue>((resolve, reject) => this.held.hold(this.where, this.t.opTimeoutMs,
        (msLeft) => { if (this.sock) this.enqueue(this.sock, frame, msLeft).then(resolve, reject); else reject(unavailable(`${this.where}: the connection was lost`)); },
        reject));
    }
    if (sock && this.frameFree) {
      // Encode into the reusable frame: fewer large allocations, less GC per batch.
      const frame = encodeCommand(args, this.frame);
      if (frame.buffer === this.frame.buffer) {
        const p = this.enqueue(sock, frame);
        // Written out synchronously (the usual case on a healthy connection): reusable now.
        // Otherwise the socket still holds it: free it when flushed.
        if (sock.writableLength !== 0) {
          this.frameFree = false;
          sock.write(EMPTY, () => { this.frameFree = true; });
        }
        return p;
      }
      if (frame.length <= MAX_FRAME) this.frame = Buffer.allocUnsafe(Math.max(frame.length, this.frame.length * 2));
      return this.enqueue(sock, frame);
    }
    // Values are encoded now, synchronously: callers may reuse their buffers once send returns.
    const frame = encodeCommand(args);
    if (sock) return this.enqueue(sock, frame);
    return (this.connecting ?? this.open()).then((s) => this.enqueue(s, frame));
  }

  close(): void {
    this.closed = true;
    this.drop(new ElasticmemError(`${this.where}: the store is closed`, 'STORE_CLOSED'));
  }

  private enqueue(sock: net.Socket, frame: Buffer, timeoutMs = this.t.opTimeoutMs): Promise<RespValue> {
    return new Promise<RespValue>((resolve, reject) => {
      const p: Pending = { resolve, reject, timer: undefined, abandoned: false };
      p.timer = setTimeout(() => {
        p.abandoned = true;
        p.timer = undefined;
        reject(unavailable(`${this.where} did not answer within ${this.t.opTimeoutMs} ms`));
      }, timeoutMs);
      this.queue.push(p);
      sock.write(frame);
    });
  }

  private onReply(v: RespValue): void {
    const p = this.queue[this.head];
    // Clear the answered slot: a kept entry would hold its settled promise and with it the
    // reply (views into 64 KiB socket chunks) until the next compaction, 1024 commands
    // later: ~100 MB of retained buffers at batch 16, promoted to old space and collected
    // by a stream of full mark-compacts (measured: 7-11 per 3,000 gets).
    this.queue[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    if (!p) {
      this.drop(unavailable(`${this.where} sent a reply nobody asked for`));
      return;
    }
    if (this.held.size > 0 && !this.queue[this.head]?.abandoned) this.held.release();
    if (p.abandoned) return;
    clearTimeout(p.timer);
    if (v instanceof RespError) p.reject(v);
    else p.resolve(v);
  }

  /** Close the connection and fail every pending command. */
  private drop(e: Error): void {
    const s = this.sock;
    this.sock = null;
    if (s) s.destroy();
    this.parser.reset();
    const q = this.queue.slice(this.head);
    this.queue = [];
    this.head = 0;
    this.held.failAll(e);
    for (const p of q) {
      if (!p || p.abandoned) continue;
      clearTimeout(p.timer);
      p.reject(e);
    }
  }

  private open(): Promise<net.Socket> {
    this.connecting = new Promise<net.Socket>((resolve, reject) => {
      const { host, port } = this.o;
      // Reads go straight to the parser (no 'data' events); see ReadArena.
      let sock: net.Socket | undefined;
      const onread = arenaOnRead((chunk) => {
        if (this.sock !== sock) return; // a connection being dropped
        try { this.parser.feed(chunk); } catch (e) { this.drop(unavailable(`${this.where}: ${describe(e)}`)); }
      });
      const s: net.Socket = this.o.tls
        // tls.connect takes onread too (the types omit it).
        ? tls.connect({ host, port, onread, servername: net.isIP(host) ? undefined : host, ...(this.o.ca ? { ca: [...tls.rootCertificates, this.o.ca.toString()] } : {}) } as tls.ConnectionOptions)
        : net.connect({ host, port, onread, noDelay: true });
      sock = s;
      const ready = this.o.tls ? 'secureConnect' : 'connect';
      let settled = false;
      const fail = (e: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        s.destroy();
        reject(e);
      };
      const timer = setTimeout(() => fail(unavailable(`cannot connect to ${this.where} within ${this.t.connectTimeoutMs} ms`)), this.t.connectTimeoutMs);
      s.once(ready, () => {
        clearTimeout(timer);
        s.setNoDelay(true);
        s.setKeepAlive(true, 10_000);
        this.parser.reset();
        this.frameFree = true;
        this.sock = s;
        s.on('close', () => { if (this.sock === s) this.drop(unavailable(`${this.where} closed the connection`)); });
        // Handshake: credentials and database first, on this connection, before anything else.
        const hello: Promise<RespValue>[] = [];
        if (this.o.password !== undefined)
          hello.push(this.enqueue(s, encodeCommand(this.o.username ? ['AUTH', this.o.username, this.o.password] : ['AUTH', this.o.password])));
        if (this.o.db) hello.push(this.enqueue(s, encodeCommand(['SELECT', String(this.o.db)])));
        hello.push(this.enqueue(s, encodeCommand(['PING']))); // NOAUTH here when a password is needed
        Promise.all(hello).then(
          () => { settled = true; resolve(s); },
          (e: Error) => {
            if (this.sock === s) this.drop(e);
            const m = e.message;
            fail(/NOAUTH|WRONGPASS|invalid password|NOPERM/i.test(m)
              ? new ElasticmemError(`store unavailable: ${this.where} refused the credentials (${m}); check user:password in the URI`, 'STORE_UNAVAILABLE')
              : unavailable(`${this.where}: handshake failed`, e));
          },
        );
      });
      s.on('error', (e) => {
        if (this.sock === s) this.drop(unavailable(this.where, e));
        else fail(unavailable(`cannot connect to ${this.where} (is redis-server running and reachable?)`, e));
      });
    }).finally(() => { this.connecting = null; });
    return this.connecting;
  }
}
