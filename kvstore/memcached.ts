/**
 * `memcached://h1:p1[,h2:p2]` — pages spread over several memcached servers by a
 * consistent-hash ring (kvstore/ketama.ts), spoken to with our batched binary-protocol
 * client (kvstore/memcached-client.ts): a batch is split per server and the parts go
 * out at once, one socket write each.
 *
 * Keys: em:<vm tag>:<page>. Items never expire. memcached is a cache: run it with -M
 * (refuse writes when full instead of evicting), otherwise it may silently drop pages
 * under memory pressure; this adapter then reports STORE_FULL instead of losing pages.
 * There is no persistence: a restarted memcached has lost every page (the pager reports
 * those pages as lost, never zero-fills them). list/usage/dropVm enumerate keys with
 * `lru_crawler metadump` (memcached 1.5+), which is slow but only used for recovery.
 */
import crypto from 'node:crypto';
import type { StoreUsage } from './types.ts';
import { type RawStore, type NetTimeouts, DEFAULT_TIMEOUTS, vmTag } from './raw.ts';
import { HashRing } from './ketama.ts';
import { McConn, metadump } from './memcached-client.ts';
import type { HostPort } from './uri.ts';

/** memcached keys are at most 250 bytes: a VM tag longer than 200 is replaced by its SHA-256. */
function tagOf(vm: string): string {
  const tag = vmTag(vm);
  return tag.length <= 200 ? tag : 'h' + crypto.createHash('sha256').update(vm).digest('hex');
}

export class MemcachedStore implements RawStore {
  readonly capabilities = { persistent: false, maxBatch: 1024 };
  private readonly conns: McConn[];
  private readonly ring: HashRing<number>;
  /** The key prefix of the last VM used: em:<tag>: */
  private lastVm: { vm: string; prefix: Buffer } | undefined;

  private constructor(readonly uri: string, private readonly servers: HostPort[], private readonly t: NetTimeouts) {
    this.conns = servers.map((s) => new McConn(s.host, s.port, t));
    this.ring = new HashRing(servers.map((s, i) => ({ id: `${s.host}:${s.port}`, server: i })));
  }

  static async open(uri: string, servers: HostPort[], t: NetTimeouts = DEFAULT_TIMEOUTS): Promise<MemcachedStore> {
    const s = new MemcachedStore(uri, servers, t);
    // Connect now: an unreachable server is reported at open (STORE_UNAVAILABLE), not at the first fault.
    try {
      await Promise.all(s.conns.map((c) => c.deleteMany([])));
    } catch (e) {
      await s.close();
      throw e;
    }
    return s;
  }

  /** Split keys per server: per server the keys and their index in the batch. */
  private split(vm: string, pages: readonly number[]): { keys: Buffer[]; idx: number[] }[] {
    let last = this.lastVm;
    if (last?.vm !== vm) this.lastVm = last = { vm, prefix: Buffer.from(`em:${tagOf(vm)}:`, 'latin1') };
    const prefix = last.prefix;
    // Every key of the batch in one buffer (keys are views of it): em:<tag>:<page>.
    const nums: string[] = new Array(pages.length);
    let size = pages.length * prefix.length;
    for (let i = 0; i < pages.length; i++) size += (nums[i] = String(pages[i]!)).length;
    const all = Buffer.allocUnsafe(size);
    const parts = this.conns.map(() => ({ keys: [] as Buffer[], idx: [] as number[] }));
    let o = 0;
    for (let i = 0; i < pages.length; i++) {
      const start = o;
      o += prefix.copy(all, o);
      o += all.write(nums[i]!, o, 'latin1');
      const k = all.subarray(start, o);
      const p = parts[this.conns.length === 1 ? 0 : this.ring.get(k)]!;
      p.keys.push(k);
      p.idx.push(i);
    }
    return parts;
  }

  async getRaw(vm: string, pages: readonly number[]): Promise<(Buffer | null)[]> {
    const out: (Buffer | null)[] = new Array(pages.length).fill(null);
    const parts = this.split(vm, pages);
    await Promise.all(parts.map((p, s) => (p.keys.length ? this.conns[s]!.getMany(p.keys, p.idx, out) : undefined)));
    return out;
  }

  async putRaw(vm: string, pages: readonly number[], values: readonly Buffer[]): Promise<void> {
    const parts = this.split(vm, pages);
    await Promise.all(parts.map((p, s) => (p.keys.length ? this.conns[s]!.setMany(p.keys, p.idx.map((i) => values[i]!)) : undefined)));
  }

  /** putRaw with each value (an envelope) written by fill straight into its server's request. */
  async putRawInto(vm: string, pages: readonly number[], size: number, fill: (i: number, dst: Buffer) => void): Promise<void> {
    const parts = this.split(vm, pages);
    // Every server's request is encoded (every fill run) before any is sent.
    const sends = parts.map((p, s) => (p.keys.length ? this.conns[s]!.prepareSetInto(p.keys, p.idx, size, fill) : undefined));
    await Promise.all(sends.map((send) => send?.()));
  }

  async delete(vm: string, pages: readonly number[]): Promise<void> {
    const parts = this.split(vm, pages);
    await Promise.all(parts.map((p, s) => (p.keys.length ? this.conns[s]!.deleteMany(p.keys) : undefined)));
  }

  /** Every key of one VM (or of elasticmem) on every server, with sizes. */
  private async scan(vm?: string): Promise<{ server: number; key: string; size: number }[][]> {
    const prefix = vm === undefined ? '' : `em:${tagOf(vm)}:`;
    const mine = vm === undefined
      ? (k: string) => /^em:[^:]+:\d+$/.test(k)
      : (k: string) => k.startsWith(prefix) && /^\d+$/.test(k.slice(prefix.length));
    return Promise.all(this.servers.map(async (s, server) =>
      (await metadump(s.host, s.port, this.t)).filter((e) => mine(e.key)).map((e) => ({ server, ...e }))));
  }

  async dropVm(vm: string): Promise<void> {
    const perServer = await this.scan(vm);
    await Promise.all(perServer.map(async (entries, s) => {
      for (let i = 0; i < entries.length; i += 1024)
        await this.conns[s]!.deleteMany(entries.slice(i, i + 1024).map((e) => Buffer.from(e.key, 'latin1')));
    }));
  }

  async list(vm: string): Promise<number[]> {
    const prefix = `em:${tagOf(vm)}:`;
    return (await this.scan(vm)).flat().map((e) => Number(e.key.slice(prefix.length)));
  }

  async usage(vm?: string): Promise<StoreUsage> {
    const all = (await this.scan(vm)).flat();
    return { pages: all.length, bytes: all.reduce((a, e) => a + e.size, 0) };
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.close();
  }
}
