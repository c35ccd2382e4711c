/**
 * `file:///path` — embedded, persistent page store on LMDB (the `lmdb` package).
 *
 * Why LMDB: a memory-mapped copy-on-write B+tree with ACID transactions. A batch of
 * pages is one transaction, and put() resolves only after that transaction committed
 * and was flushed (no noSync; lmdb's overlapping sync flushes after the commit, and
 * write() waits for that flush too): invariant 3 (store before drop) holds even
 * across a host crash. Because committed pages live in the file, not in
 * the monitor, they survive a monitor crash and restart (invariant 4); LMDB never
 * needs recovery or a write-ahead log replay, and readers (faults) never block the
 * writer (evictions). Reads are served from the page cache through the map with one
 * copy. Alternatives rejected: SQLite (per-row overhead and a WAL to checkpoint),
 * a plain file indexed by page (no atomic batches, needs our own free-space map).
 *
 * Layout: one LMDB environment per path (directory: data.mdb + lock.mdb), shared by
 * every store opened on that path in this process; one key prefix per VM: keys are
 * [vm, page] in LMDB's ordered-binary encoding, so one VM's pages form a contiguous
 * range (list, usage, dropVm scan only that range) and never mix with another's.
 */
import fs from 'node:fs';
import { open, type RootDatabase } from 'lmdb';
import type { StoreUsage } from './types.ts';
import type { RawStore } from './raw.ts';
import { ElasticmemError, describe } from './errors.ts';

interface Env { db: RootDatabase<Buffer, [string, number]>; refs: number }
const envs = new Map<string, Env>();

const END = 2 ** 54; // above every page key

export class FileStore implements RawStore {
  readonly uri: string;
  readonly capabilities = { persistent: true, maxBatch: 4096 };
  private env: Env | undefined;

  private constructor(readonly path: string, env: Env) {
    this.uri = `file://${path}`;
    this.env = env;
  }

  static open(path: string): FileStore {
    let env = envs.get(path);
    if (!env) {
      try {
        fs.mkdirSync(path, { recursive: true, mode: 0o700 });
        const db = open<Buffer, [string, number]>({
          path,
          encoding: 'binary',
          keyEncoding: 'ordered-binary',
          compression: false, // pages are enveloped (and optionally deflated) above us
          noSync: false,
          noMetaSync: false,
        });
        env = { db, refs: 0 };
      } catch (e) {
        throw new ElasticmemError(`cannot open the file store at '${path}': ${describe(e)}`, 'STORE_UNAVAILABLE');
      }
      envs.set(path, env);
    }
    env.refs++;
    return new FileStore(path, env);
  }

  private db(): RootDatabase<Buffer, [string, number]> {
    if (!this.env) throw new ElasticmemError(`the file store at '${this.path}' is closed`, 'STORE_CLOSED');
    return this.env.db;
  }

  async getRaw(vm: string, pages: readonly number[]): Promise<(Buffer | null)[]> {
    const db = this.db();
    const out: (Buffer | null)[] = new Array(pages.length);
    for (let i = 0; i < pages.length; i++) out[i] = db.getBinary([vm, pages[i]!]) ?? null;
    return out;
  }

  async putRaw(vm: string, pages: readonly number[], values: readonly Buffer[]): Promise<void> {
    const db = this.db();
    // One transaction per batch; resolves after commit + flush.
    await this.write(() => { for (let i = 0; i < pages.length; i++) db.put([vm, pages[i]!], values[i]!); });
  }

  async delete(vm: string, pages: readonly number[]): Promise<void> {
    const db = this.db();
    await this.write(() => { for (const p of pages) db.remove([vm, p]); });
  }

  async dropVm(vm: string): Promise<void> {
    const db = this.db();
    const keys = Array.from(db.getKeys({ start: [vm], end: [vm, END] })).filter((k) => k[0] === vm);
    for (let i = 0; i < keys.length; i += 10000) {
      const chunk = keys.slice(i, i + 10000);
      await this.write(() => { for (const k of chunk) db.remove(k); });
    }
  }

  async list(vm: string): Promise<number[]> {
    const out: number[] = [];
    for (const k of this.db().getKeys({ start: [vm], end: [vm, END] })) if (k[0] === vm) out.push(k[1]);
    return out;
  }

  async usage(vm?: string): Promise<StoreUsage> {
    const range = vm === undefined ? {} : { start: [vm, 0] as [string, number], end: [vm, END] as [string, number] };
    let pages = 0;
    let bytes = 0;
    for (const { key, value } of this.db().getRange(range)) {
      if (vm !== undefined && key[0] !== vm) continue;
      pages++;
      bytes += value.length;
    }
    return { pages, bytes };
  }

  async close(): Promise<void> {
    const env = this.env;
    if (!env) return;
    this.env = undefined;
    if (--env.refs === 0) {
      envs.delete(this.path);
      await env.db.close();
    }
  }

  private async write(fn: () => void): Promise<void> {
    try {
      const db = this.db();
      await db.transaction(fn);
      // lmdb commits with overlappingSync on Linux by default: the transaction resolves
      // once committed (visible), its flush to disk follows. A put is acknowledged (and
      // its pages dropped from the guest) only once durable.
      await db.flushed;
    } catch (e) {
      if (e instanceof ElasticmemError) throw e;
      const full = /MDB_MAP_FULL|ENOSPC/.test(String((e as Error).message));
      throw new ElasticmemError(`file store '${this.path}': write failed: ${describe(e)}`, full ? 'STORE_FULL' : 'STORE_ERROR');
    }
  }
}
