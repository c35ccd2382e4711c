/**
 * Redis Cluster over the lean RESP client (resp-client.ts): one RespClient per master,
 * the slot map from CLUSTER SLOTS, commands routed by the key slot of their first key.
 *
 * Redirections: a MOVED reply refreshes the slot map and resends the command to the
 * node it names; an ASK reply sends ASKING + the command to that node (same connection,
 * in order) without changing the map. A connection error (node gone, connection closed)
 * refreshes the map once and retries once; if the refresh finds no node, the original
 * error stands (STORE_UNAVAILABLE via mapError). A timed-out command is never retried:
 * it stays queued on its connection (see resp-client.ts), so a resend could overtake it.
 */
import { RespClient, RespError, type RespArg, type RespOptions, type RespValue } from './resp-client.ts';
import type { NetTimeouts } from './raw.ts';
import { ElasticmemError } from './errors.ts';
import type { HostPort } from './uri.ts';

export const SLOTS = 16384;
const MAX_REDIRECTS = 16;

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

function crc16(b: Uint8Array, start: number, end: number): number {
  let crc = 0;
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ b[i]!) & 0xff]!;
  return crc;
}

/**
 * The cluster slot of a key, as Redis computes it (cluster.c keyHashSlot): CRC16/XMODEM
 * of the key's bytes mod 16384, or of the hash tag — the bytes between the first '{' and
 * the first '}' after it — when that is non-empty.
 */
export function keySlot(key: string | Buffer): number {
  if (typeof key === 'string') {
    const s = asciiSlot(key);
    if (s >= 0) return s;
  }
  const b = typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
  const open = b.indexOf(0x7b);
  if (open >= 0) {
    const close = b.indexOf(0x7d, open + 1);
    if (close > open + 1) return crc16(b, open + 1, close) & (SLOTS - 1);
  }
  return crc16(b, 0, b.length) & (SLOTS - 1);
}

/** keySlot of an all-ASCII string without encoding it (-1: not ASCII). */
function asciiSlot(k: string): number {
  let start = 0;
  let end = k.length;
  const open = k.indexOf('{');
  if (open >= 0) {
    const close = k.indexOf('}', open + 1);
    if (close > open + 1) { start = open + 1; end = close; }
  }
  let crc = 0;
  for (let i = start; i < end; i++) {
    const c = k.charCodeAt(i);
    if (c > 0x7f) return -1;
    crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ c) & 0xff]!;
  }
  // Chars outside the hashed part may be non-ASCII: only its own bytes matter, and the
  // tag boundaries are the same in UTF-8 ('{' '}' never occur inside a multi-byte char).
  return crc & (SLOTS - 1);
}

function isConnectionError(e: unknown): boolean {
  // RespClient's own failures: dropped/refused connections are STORE_UNAVAILABLE without
  // "did not answer" (that one is a timeout: the command may still be executed).
  return e instanceof ElasticmemError && e.code === 'STORE_UNAVAILABLE' && !/did not answer within|refused the credentials/.test(e.message);
}

export class ClusterClient {
  /** "host:port" of the master owning each slot (undefined: unassigned). */
  private slots: (string | undefined)[] = new Array(SLOTS);
  private readonly clients = new Map<string, RespClient>();
  private masterIds: string[] = [];
  private refreshing: Promise<void> | null = null;
  private closed = false;

  constructor(private readonly seeds: HostPort[], private readonly o: Omit<RespOptions, 'host' | 'port' | 'db'>, private readonly t: NetTimeouts) {}

  /** Load the slot map (openStore reports an unreachable or non-cluster server at once). */
  async connect(): Promise<void> {
    await this.refresh();
  }

  /** The clients of the current masters. */
  masters(): RespClient[] {
    return this.masterIds.map((id) => this.client(id));
  }

  /**
   * Send one command to the master owning `firstKey`'s slot (any master without a key).
   * The first attempt is encoded synchronously, as RespClient.send does (a throwing
   * in-place fill throws here, unsent); redirections and retries follow in `recover`.
   */
  send(firstKey: string | undefined, args: readonly RespArg[]): Promise<RespValue> {
    let target: string;
    try { target = this.nodeFor(firstKey); } catch (e) { return Promise.reject(e); }
    const c = this.client(target);
    return c.send(args).catch((e: unknown) => this.recover(e, c, firstKey, args));
  }

  private async recover(err: unknown, c: RespClient, firstKey: string | undefined, args: readonly RespArg[]): Promise<RespValue> {
    let retriedConn = false;
    for (let redirects = 0; ; ) {
      let target: string;
      let asking = false;
      if (err instanceof RespError) {
        const m = /^(MOVED|ASK) (\d+) (\S+)$/.exec(err.message);
        if (!m || ++redirects > MAX_REDIRECTS) throw err;
        target = this.address(m[3]!, c);
        if (m[1] === 'MOVED') {
          this.slots[Number(m[2])] = target;
          // The whole map has probably changed (resharding): reload it; this command
          // follows the redirection it was given.
          void this.refresh().catch(() => { /* the next redirection or error tells */ });
        } else {
          asking = true;
        }
      } else {
        if (retriedConn || !isConnectionError(err) || this.closed) throw err;
        retriedConn = true;
        try { await this.refresh(); } catch { throw err; }
        target = this.nodeFor(firstKey);
      }
      c = this.client(target);
      try {
        if (!asking) return await c.send(args);
        const a = c.send(['ASKING']);
        const r = c.send(args);
        await a.catch(() => { /* the command's own reply tells */ });
        return await r;
      } catch (e) {
        err = e;
      }
    }
  }

  close(): void {
    this.closed = true;
    for (const c of this.clients.values()) c.close();
  }

  private nodeFor(key: string | undefined): string {
    const n = key === undefined ? this.masterIds[0] : this.slots[keySlot(key)];
    if (n === undefined) throw new ElasticmemError(`store unavailable: redis cluster: no master serves the slot of ${key ?? 'any key'} (CLUSTERDOWN?)`, 'STORE_UNAVAILABLE');
    return n;
  }

  /** "host:port" from a redirection/slot-map entry; an empty host means the answering node's. */
  private address(hp: string, from: RespClient): string {
    const i = hp.lastIndexOf(':');
    const host = hp.slice(0, i);
    return host === '' || host === '?' ? `${from.o.host}:${hp.slice(i + 1)}` : hp;
  }

  private client(addr: string): RespClient {
    let c = this.clients.get(addr);
    if (!c) {
      const i = addr.lastIndexOf(':');
      c = new RespClient({ ...this.o, host: addr.slice(0, i), port: Number(addr.slice(i + 1)) }, this.t);
      this.clients.set(addr, c);
    }
    return c;
  }

  /** Reload the slot map from the first node that answers CLUSTER SLOTS (one refresh at a time). */
  private refresh(): Promise<void> {
    this.refreshing ??= this.load().finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  private async load(): Promise<void> {
    const candidates = [...new Set([...this.masterIds, ...this.seeds.map((s) => `${s.host}:${s.port}`)])];
    let last: unknown;
    for (const addr of candidates) {
      const c = this.client(addr);
      try {
        const r = await c.send(['CLUSTER', 'SLOTS']);
        if (!Array.isArray(r)) throw new Error('CLUSTER SLOTS: unexpected reply');
        const slots: (string | undefined)[] = new Array(SLOTS);
        const masters = new Set<string>();
        for (const range of r as RespValue[][]) {
          const master = range[2] as RespValue[];
          const host = String(master[0]);
          const a = this.address(`${host}:${Number(master[1])}`, c);
          masters.add(a);
          for (let s = Number(range[0]); s <= Number(range[1]); s++) slots[s] = a;
        }
        if (masters.size === 0) throw new ElasticmemError(`store unavailable: redis cluster at ${addr} has no slots assigned (run redis-cli --cluster create)`, 'STORE_UNAVAILABLE');
        this.slots = slots;
        this.masterIds = [...masters].sort();
        return;
      } catch (e) {
        last = e;
      }
    }
    throw last;
  }
}
