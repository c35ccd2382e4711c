/**
 * Pager: the lifetime of one attached target. Wraps the native pager handle, serves
 * its batched bridge requests from a TypeScript PageStore (one call per batch), and
 * re-emits native events. With the `memory:` store the native side never calls back.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { loadNative, ElasticmemError, type RegionSpec, type PagerStatsRaw, type PagerEvent, type BridgeRequest, type AcquiredUffd, type PagerTestHooks } from './index.ts';
import type { PageStore } from '../kvstore/types.ts';
import { startTimeOf, processEnded } from './proc-start.ts';
import { shmemThpMessage, shmemThpRisk } from './shmem-thp.ts';

/** Refuse memfd RAM that huge pages can back (see shmem-thp.ts): before anything is touched. */
function refuseShmemThp(pid: number, regions: RegionSpec[]): void {
  for (const r of regions) {
    const why = shmemThpRisk(pid, r);
    if (why) throw new ElasticmemError(shmemThpMessage(r, why), 'EM_SHMEM_THP');
  }
}

export interface PagerAttachOptions extends PagerTestHooks {
  pid: number;
  /**
   * The target's start time when it was found (/proc/PID/stat field 22): if the pid
   * names another process by the time of the attach (the VM ended and its pid was
   * reused), the attach is refused instead of paging a stranger.
   */
  startTime?: number;
  /** Stable id of the VM: keys in the store are per VM. */
  vmId: string;
  regions: RegionSpec[];
  capPages: number;
  store: PageStore;
  /** Take over a uffd left in the target by a monitor that died, instead of creating one. */
  reattach?: boolean;
  prefetchMax?: number;
  evictBatch?: number;
  /** Replacement policy (default 'refault'); 'fifo' exists to measure the difference. */
  policy?: 'refault' | 'fifo';
  /**
   * CPUs for the fault thread and the eviction thread (default: any). Pinning the fault
   * thread to the CPUs of the vCPUs it serves makes a fault two local context switches
   * instead of two cross-CPU wake-ups, which on a VM host is most of a fault's cost.
   */
  faultCpus?: number[];
  evictCpus?: number[];
  /**
   * Without faultCpus: the fault thread moves to the CPU its faulting thread runs on
   * (checked every 256 faults) and the evictor off it. Default true; false leaves both
   * to the scheduler.
   */
  followFaults?: boolean;
  /** Folder of the per-target attach locks (default /run/elasticmem/locks). */
  lockDir?: string;
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

  private constructor(readonly opts: PagerAttachOptions, uffd: AcquiredUffd, handle: unknown, private lockFd: number) {
    super();
    this.uffd = uffd;
    this.handle = handle;
    // 'error' events from the data plane must never crash the monitor when nobody listens.
    this.on('error', () => {});
  }

  private releaseLock(): void {
    if (this.lockFd >= 0) loadNative().closeFd(this.lockFd);
    this.lockFd = -1;
  }

  static async attach(opts: PagerAttachOptions): Promise<Pager> {
    const native = loadNative();
    validate(opts);
    refuseShmemThp(opts.pid, opts.regions);
    const lockFd = lockTarget(opts.pid, opts.lockDir, opts.startTime);
    try {
      return await Pager.attachLocked(opts, lockFd);
    } catch (e) {
      native.closeFd(lockFd);
      throw e;
    }
  }

  private static async attachLocked(opts: PagerAttachOptions, lockFd: number): Promise<Pager> {
    const native = loadNative();
    let uffd: AcquiredUffd;
    let remotePages: number[][] | undefined;
    if (!opts.reattach) {
      const left = native.findTargetUffd(opts.pid);
      if (left) {
        native.closeFd(left.fd);
        throw new ElasticmemError(
          `process ${opts.pid} already holds a userfaultfd (fd ${left.targetFd}), most likely left by an elasticmem monitor that died; take it over with a re-attach instead of a fresh attach`,
          'EM_UFFD_PRESENT',
        );
      }
      // A fresh attach: anything stored under this VM id is from an earlier, finished session.
      await opts.store.dropVm(opts.vmId);
    }
    if (opts.reattach) {
      if (!opts.store.capabilities.persistent)
        throw new ElasticmemError(
          `cannot take over process ${opts.pid} with the store ${opts.store.uri}: it does not outlive a monitor, so the pages the dead monitor evicted are gone and would read back as zeros. Re-attach with the persistent store the VM was attached with (file://, redis with AOF, ...)`,
          'EM_REATTACH_NEEDS_PERSISTENT_STORE',
        );
      const found = native.findTargetUffd(opts.pid);
      if (!found) throw new ElasticmemError(`process ${opts.pid} holds no userfaultfd to take over; attach it normally`, 'EM_NO_UFFD_TO_TAKE_OVER');
      uffd = found;
      let keys: number[];
      try {
        keys = await opts.store.list(opts.vmId);
      } catch (e) {
        native.closeFd(found.fd);  // (the target keeps its own: it waits for the next try)
        throw e;
      }
      remotePages = opts.regions.map(() => []);
      const byKeyId = new Map(opts.regions.map((r, i) => [r.keyId ?? i, i]));
      for (const k of keys) {
        const r = byKeyId.get(Math.floor(k / REGION_KEY_STRIDE));
        if (r !== undefined) remotePages[r]!.push(k % REGION_KEY_STRIDE);
      }
    } else {
      uffd = native.acquireUffd(opts.pid);
    }
    const memHandle = nativeHandleOf(opts.store);
    let pager: Pager | undefined;
    const handle = native.pagerStart({
      pid: opts.pid,
      uffdFd: uffd.fd,
      uffdTargetFd: uffd.targetFd,
      policy: opts.policy,
      _testUnsafeSkipWriteProtect: opts._testUnsafeSkipWriteProtect,
      _testFailDrops: opts._testFailDrops,
      _testNonBlockingReads: opts._testNonBlockingReads,
      _testNoSplice: opts._testNoSplice,
      _testRaceWindowMs: opts._testRaceWindowMs,
      _testUnsafeSkipCowProtect: opts._testUnsafeSkipCowProtect,
      _testFailPuts: opts._testFailPuts,
      _testStalePipe: opts._testStalePipe,
      _testDeferFaults: opts._testDeferFaults,
      regions: opts.regions,
      capPages: opts.capPages,
      store: memHandle !== undefined ? { kind: 'memory', handle: memHandle, vm: opts.vmId } : { kind: 'bridge' },
      reattach: !!opts.reattach,
      remotePages,
      prefetchMax: opts.prefetchMax,
      evictBatch: opts.evictBatch,
      faultCpus: opts.faultCpus,
      evictCpus: opts.evictCpus,
      followFaults: opts.followFaults,
      onRequest: (req) => pager?.serve(req),
      onEvent: (ev) => pager?.emit(ev.type, ev),
    });
    pager = new Pager(opts, uffd, handle, lockFd);
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

  /**
   * Put hot-added guest RAM (a DIMM's backend, a new memfd) under this pager while it
   * runs; the cap stays as it is. A take-over later must list these regions too.
   */
  addRegions(regions: RegionSpec[]): void {
    if (this.closed) throw new ElasticmemError('this pager has been detached or abandoned; attach again', 'EM_PAGER_STOPPED');
    refuseShmemThp(this.opts.pid, regions);
    loadNative().pagerAddRegions(this.handle, regions);
  }

  /** Drain every page back into the target, unregister, close. Progress arrives as 'progress' events. */
  detach(): Promise<void> {
    return new Promise((resolve, reject) => {
      loadNative().pagerDetach(this.handle, (err) => {
        if (err) return reject(err);
        this.closed = true;
        this.releaseLock();
        resolve();
      });
    });
  }

  /** Stop serving without draining: the target keeps its uffd and waits for a new monitor. */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    loadNative().pagerAbandon(this.handle);
    this.releaseLock();
  }

  get isClosed(): boolean {
    return this.closed;
  }
}

const PAGE = 4096;

function validate(opts: PagerAttachOptions): void {
  if (!Number.isInteger(opts.pid) || opts.pid <= 0) throw new ElasticmemError(`'${opts.pid}' is not a process id`, 'EM_BAD_ARG');
  if (!opts.regions.length) throw new ElasticmemError(`no guest RAM regions to attach in process ${opts.pid}`, 'EM_ATTACH_NO_REGION');
  const totalPages = opts.regions.reduce((a, r) => a + r.length / PAGE, 0);
  if (!Number.isInteger(opts.capPages) || opts.capPages < 1)
    throw new ElasticmemError(`the local cap must be at least one page, got ${opts.capPages}`, 'EM_BAD_CAP');
  if (opts.capPages > totalPages)
    throw new ElasticmemError(
      `the local cap (${opts.capPages} pages = ${(opts.capPages * PAGE) / 2 ** 20} MiB) is larger than the guest RAM being paged (${totalPages} pages = ${(totalPages * PAGE) / 2 ** 20} MiB): choose a smaller --local`,
      'EM_BAD_CAP',
    );
  validateCpus(opts.faultCpus, 'fault thread');
  validateCpus(opts.evictCpus, 'eviction thread');
  if (opts.followFaults !== undefined && typeof opts.followFaults !== 'boolean')
    throw new ElasticmemError(`followFaults must be true or false, got ${JSON.stringify(opts.followFaults)}`, 'EM_BAD_ARG');
  if (opts.followFaults === true && opts.faultCpus !== undefined)
    throw new ElasticmemError('followFaults: true cannot go with faultCpus (the fault thread stays on those CPUs): drop one of the two', 'EM_BAD_ARG');
}

/** CPU numbers this process may run on (sched_getaffinity, through /proc). */
export function allowedCpus(): number[] {
  const line = fs.readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith('Cpus_allowed_list:'));
  const out: number[] = [];
  for (const part of (line?.split(':')[1] ?? '').trim().split(',')) {
    if (!part) continue;
    const [a, b] = part.split('-').map(Number);
    for (let c = a!; c <= (b ?? a!); c++) out.push(c);
  }
  return out;
}

function validateCpus(cpus: number[] | undefined, what: string): void {
  if (cpus === undefined) return;
  const allowed = allowedCpus();
  if (!Array.isArray(cpus) || cpus.length === 0 || cpus.some((c) => !Number.isInteger(c) || !allowed.includes(c)))
    throw new ElasticmemError(
      `the ${what} CPUs ${JSON.stringify(cpus)} are not CPUs this machine lets the monitor use (${allowed.join(',')}): pick from those`,
      'EM_BAD_ARG',
    );
}

function lockTarget(pid: number, dir = '/run/elasticmem/locks', expectStart?: number): number {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // The process start time makes the lock name unique even if the pid is reused.
  const start = startTimeOf(pid);
  if (start === null) throw new ElasticmemError(`no process with pid ${pid}: check the pid (it may have exited)`, 'EM_NO_PROCESS', 3);
  if (expectStart !== undefined && start !== expectStart) {
    throw new ElasticmemError(`process ${pid} is not the one that was found (it started at another time: that one ended and its pid was reused); nothing was attached`, 'EM_NO_PROCESS', 3);
  }
  removeStaleLocks(dir);
  return loadNative().targetLock(path.join(dir, `${pid}-${start}.lock`));
}

/**
 * Lock files of processes that have ended: nobody can want them again (the name holds
 * the pid and its start time), so they are removed rather than left to pile up.
 */
function removeStaleLocks(dir: string): void {
  for (const f of fs.readdirSync(dir)) {
    const m = /^(\d+)-(\d+)\.lock$/.exec(f);
    if (m && processEnded(Number(m[1]), Number(m[2]))) fs.rmSync(path.join(dir, f), { force: true });
  }
}

export type { PagerEvent, PagerStatsRaw, RegionSpec };
