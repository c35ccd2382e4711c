/**
 * Pager: the lifetime of one attached target. Wraps the native pager handle, serves
 * its batched bridge requests from a TypeScript PageStore (one call per batch), and
 * re-emits native events. With the `memory:` store the native side never calls back.
 */
import { EventEmitter } from 'node:events';
import { loadNative, ElasticmemError, type RegionSpec, type PagerStatsRaw, type PagerEvent, type BridgeRequest, type AcquiredUffd } from './index.ts';
import type { PageStore } from '../kvstore/types.ts';

export interface PagerAttachOptions {
  pid: number;
  /** Stable id of the VM: keys in the store are per VM. */
  vmId: string;
  regions: RegionSpec[];
  capPages: number;
  store: PageStore;
  /** Take over a uffd left in the target by a monitor that died, instead of creating one. */
  reattach?: boolean;
  prefetchMax?: number;
  evictBatch?: number;
}

/** Anything that exposes the native memory-store handle (kvstore/memory.ts). */
interface NativeBacked { nativeHandle(): unknown }
function nativeHandleOf(store: PageStore): unknown | undefined {
  const s = store as unknown as Partial<NativeBacked>;
  return store.capabilities.native && typeof s.nativeHandle === 'function' ? s.nativeHandle() : undefined;
}

/** Region-relative page keys: the store key of page i of region r is r * REGION_KEY_STRIDE + i. */
export const REGION_KEY_STRIDE = 2 ** 32;

export class Pager extends EventEmitter {
  readonly uffd: AcquiredUffd;
  private handle: unknown;
  private closed = false;

  private constructor(readonly opts: PagerAttachOptions, uffd: AcquiredUffd, handle: unknown) {
    super();
    this.uffd = uffd;
    this.handle = handle;
  }

  static async attach(opts: PagerAttachOptions): Promise<Pager> {
    const native = loadNative();
    let uffd: AcquiredUffd;
    let remotePages: number[][] | undefined;
    if (opts.reattach) {
      const found = native.findTargetUffd(opts.pid);
      if (!found) throw new ElasticmemError(`process ${opts.pid} holds no userfaultfd to take over; attach it normally`, 'EM_NO_UFFD_TO_TAKE_OVER');
      uffd = found;
      const keys = await opts.store.list(opts.vmId);
      remotePages = opts.regions.map(() => []);
      for (const k of keys) {
        const r = Math.floor(k / REGION_KEY_STRIDE);
        if (r < remotePages.length) remotePages[r]!.push(k % REGION_KEY_STRIDE);
      }
    } else {
      uffd = native.acquireUffd(opts.pid);
    }
    const memHandle = nativeHandleOf(opts.store);
    let pager: Pager | undefined;
    const handle = native.pagerStart({
      pid: opts.pid,
      uffdFd: uffd.fd,
      regions: opts.regions,
      capPages: opts.capPages,
      store: memHandle !== undefined ? { kind: 'memory', handle: memHandle, vm: opts.vmId } : { kind: 'bridge' },
      reattach: !!opts.reattach,
      remotePages,
      prefetchMax: opts.prefetchMax,
      evictBatch: opts.evictBatch,
      onRequest: (req) => pager?.serve(req),
      onEvent: (ev) => pager?.emit(ev.type, ev),
    });
    pager = new Pager(opts, uffd, handle);
    return pager;
  }

  /** Serve one batched bridge request from the TypeScript store. */
  private serve(req: BridgeRequest): void {
    const native = loadNative();
    const { store, vmId } = this.opts;
    let p: Promise<(Buffer | null)[] | void>;
    if (req.op === 'get') p = store.get(vmId, req.pages, req.versions);
    else if (req.op === 'put') p = store.put(vmId, req.pages, req.data ?? [], req.versions);
    else p = store.delete(vmId, req.pages);
    p.then(
      (res) => { if (!this.closed) native.pagerComplete(this.handle, req.id, null, res ? res : undefined); },
      (err: Error) => { if (!this.closed) native.pagerComplete(this.handle, req.id, `${(err as ElasticmemError).code ?? 'STORE_ERROR'}: ${err.message}`); },
    );
  }

  stats(): PagerStatsRaw {
    return loadNative().pagerStats(this.handle);
  }

  setCap(capPages: number): void {
    loadNative().pagerSetCap(this.handle, capPages);
  }

  /** Drain every page back into the target, unregister, close. Progress arrives as 'progress' events. */
  detach(): Promise<void> {
    return new Promise((resolve, reject) => {
      loadNative().pagerDetach(this.handle, (err) => {
        this.closed = true;
        if (err) reject(err); else resolve();
      });
    });
  }

  /** Stop serving without draining: the target keeps its uffd and waits for a new monitor. */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    loadNative().pagerAbandon(this.handle);
  }
}

export type { PagerEvent, PagerStatsRaw, RegionSpec };
