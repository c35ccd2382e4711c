/**
 * `memory:` — the embedded store of the native data plane (native/memstore.cc). The
 * pager reaches it directly from its threads through nativeHandle(), so the hot path
 * never enters JavaScript; this class serves everything else (list, usage, tests).
 * No envelope: the pages never leave the monitor's address space, and the native store
 * guards its own blocks (an LZ4 block that does not decompress is STORE_INTEGRITY).
 * Versions are not stored here: the pager keeps the newest copy itself.
 */
import { loadNative, type NativeAddon } from '../native/index.ts';
import { PAGE_SIZE, type PageStore, type StoreCapabilities, type StoreUsage } from './types.ts';
import { checkPages, checkVm } from './raw.ts';
import { badArg, ElasticmemError } from './errors.ts';

export interface MemoryStoreOptions {
  /** LZ4-compress pages in memory (kept raw when LZ4 does not shrink them). */
  compress?: boolean;
}

export class MemoryStore implements PageStore {
  readonly uri = 'memory:';
  readonly capabilities: StoreCapabilities = { persistent: false, maxBatch: 4096, native: true };
  private readonly native: NativeAddon;
  private handle: unknown;

  constructor(opts: MemoryStoreOptions = {}) {
    this.native = loadNative();
    this.handle = this.native.memStoreCreate({ compress: !!opts.compress });
  }

  /** The native handle the pager shares (it keeps its own reference to the store). */
  nativeHandle(): unknown {
    return this.h();
  }

  private h(): unknown {
    if (this.handle === undefined) throw new ElasticmemError('the memory store is closed', 'STORE_CLOSED');
    return this.handle;
  }

  async get(vm: string, pages: readonly number[], _versions?: readonly number[]): Promise<(Buffer | null)[]> {
    checkVm(vm);
    checkPages(pages);
    return this.native.memStoreGet(this.h(), vm, pages as number[]);
  }

  async put(vm: string, pages: readonly number[], data: readonly Buffer[], _versions?: readonly number[]): Promise<void> {
    checkVm(vm);
    checkPages(pages);
    if (!Array.isArray(data) || data.length !== pages.length) throw badArg(`data has ${data?.length} entries for ${pages.length} pages`);
    for (let i = 0; i < data.length; i++)
      if (!Buffer.isBuffer(data[i]) || data[i]!.length !== PAGE_SIZE) throw badArg(`data #${i} must be a Buffer of exactly ${PAGE_SIZE} bytes`);
    this.native.memStorePut(this.h(), vm, pages as number[], data as Buffer[]);
  }

  async delete(vm: string, pages: readonly number[]): Promise<void> {
    checkVm(vm);
    checkPages(pages);
    this.native.memStoreDelete(this.h(), vm, pages as number[]);
  }

  async dropVm(vm: string): Promise<void> {
    checkVm(vm);
    this.native.memStoreDropVm(this.h(), vm);
  }

  async list(vm: string): Promise<number[]> {
    checkVm(vm);
    return this.native.memStoreList(this.h(), vm);
  }

  async usage(vm?: string): Promise<StoreUsage> {
    if (vm !== undefined) checkVm(vm);
    return this.native.memStoreUsage(this.h(), vm);
  }

  /** Drops this object's reference; a pager still holding the store keeps it alive. */
  async close(): Promise<void> {
    this.handle = undefined;
  }
}
