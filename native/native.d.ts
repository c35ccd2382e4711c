/**
 * The C++ data plane's exports (build/Release/elasticmem.node), typed once here: a few
 * flat functions and the plain objects they take and return. native/index.ts loads the
 * addon with these types; classes with lifetimes and events live above it
 * (native/pager.ts, kvstore/memory.ts).
 */
/** A guest-RAM region in the target's address space. */
export interface RegionSpec {
  /** Start address in the target (page aligned). Passed as a decimal or 0x string to keep 64 bits exact. */
  start: string;
  /** Length in bytes (page multiple). */
  length: number;
  /** 'memfd': shared file mapping (evict by copy + fallocate PUNCH_HOLE); 'anon': private anonymous (evict by injected process_madvise DONTNEED). */
  kind: 'memfd' | 'anon';
  /** For memfd: a path that opens the backing file (/proc/PID/map_files/LO-HI) and the offset of `start` in it. */
  filePath?: string;
  fileOffset?: number;
  /** Human name (QEMU RAM block id, memfd name). */
  name: string;
  /**
   * The region's part of its pages' store keys (keyId * 2^32 + page), below 2^21. Give
   * one that depends on the region itself (the daemon hashes the RAM block's name), so a
   * monitor that takes over finds the pages whatever order it lists the regions in.
   * Default: the region's position in the attach request.
   */
  keyId?: number;
}

export interface AcquiredUffd {
  /** The monitor's own copy of the userfaultfd. */
  fd: number;
  /** The fd number of the same uffd inside the target (the target keeps it: crash safety). */
  targetFd: number;
  /** How it was obtained. */
  route: 'syscall' | 'dev-userfaultfd' | 'existing';
}

export interface PagerStatsRaw {
  faults: number;
  zeroFills: number;
  fetches: number;
  evictions: number;
  cleanDrops: number;
  storeWrites: number;
  prefetched: number;
  wpFaults: number;
  discards: number;
  evictAborts: number;
  residentPages: number;
  localCapPages: number;
  remotePages: number;
  totalPages: number;
  storeRetries: number;
  /** Fault batches that waited at the cap for the evictor (back-pressure), and the total wait. */
  capWaits: number;
  capWaitUs: number;
  /** Eviction batches that took pages out: evictions / evictBatches is the pages a batch. */
  evictBatches: number;
  /** The one CPU the fault thread runs on (faultCpus of one CPU, or where it followed the faults); -1: not pinned. */
  faultCpu: number;
  /** How dirty pages leave: 'splice' (memfd RAM and the embedded store: no write-protect, docs/architecture.md) or 'write-protect'. */
  evictMode: 'splice' | 'write-protect';
  lostPages: number;
  faultLatencyUs: { p50: number; p90: number; p99: number; max: number; count: number };
  /** Histogram of fault latency: bucket upper bounds in µs and counts. */
  latencyHistogram: { boundsUs: number[]; counts: number[] };
  storeState: 'ok' | 'retrying' | 'lost';
  storeError: string;
  metadataBytes: number;
  draining: boolean;
}

/** A batched request from the pager to a store written in TypeScript. */
export interface BridgeRequest {
  id: number;
  op: 'get' | 'put' | 'delete';
  pages: number[];
  versions: number[];
  /** For put: one 4 KiB Buffer per page. */
  data?: Buffer[];
}

export interface PagerEvent {
  type: 'store-down' | 'store-up' | 'page-lost' | 'progress' | 'error' | 'target-exited';
  message: string;
  pages?: number[];
  done?: number;
  total?: number;
  /** error: errno of the failing system call, when one failed. */
  errno?: number;
  /** error: which system call (or operation) failed. */
  syscall?: string;
}

/** TEST ONLY switches of the pager, each there to prove a test can fail or to reach a rare path. */
export interface PagerTestHooks {
  /** TEST ONLY: evict without write-protecting first (loses racing writes); proves the race test can fail. */
  _testUnsafeSkipWriteProtect?: boolean;
  /** TEST ONLY: every drop removes half of its runs, then fails (proves a partial drop loses nothing). */
  _testFailDrops?: boolean;
  /** TEST ONLY: the mode used when no wake signal is free: non-blocking reads and ppoll on the uffd, stop eventfd and pidfd. */
  _testNonBlockingReads?: boolean;
  /** TEST ONLY: evict memfd RAM by write-protect and copy-out even with the embedded store (the path other stores take). */
  _testNoSplice?: boolean;
  /** TEST ONLY: the splice eviction waits this many ms between splice and punch (widens the race the race tests probe). */
  _testRaceWindowMs?: number;
  /** TEST ONLY: the splice eviction does not write-protect private pages a write would copy (zero page, shared pages): proves the test that needs it. */
  _testUnsafeSkipCowProtect?: boolean;
  /** TEST ONLY: every other splice batch's store fails after the punch (its pages must go back into the guest). */
  _testFailPuts?: boolean | 'always';
  /** TEST ONLY: every 16th splice batch finds a stray page left in its pipe (it must be discarded); 'unsafe-keep' puts one there and keeps it (proves the test can fail). */
  _testStalePipe?: boolean | 'unsafe-keep';
  /** TEST ONLY: every fault is served from the retry list (the path after EAGAIN), one round later. */
  _testDeferFaults?: boolean;
}

export interface PagerStartOptions extends PagerTestHooks {
  pid: number;
  /** The monitor's uffd copy; pagerStart takes ownership of it, even when it throws. */
  uffdFd: number;
  /** The uffd's fd number inside the target, closed there by detach. */
  uffdTargetFd?: number;
  /** Replacement policy: 'refault' (default: by each page's refault distance) or 'fifo' (FluidMem/umap, for comparison). */
  policy?: 'refault' | 'fifo';
  regions: RegionSpec[];
  capPages: number;
  /** 'memory' = a native memory store handle (hot path never enters JS); 'bridge' = requests go to onRequest. */
  store: { kind: 'memory'; handle: unknown; vm: string } | { kind: 'bridge' };
  /** Re-attach after a monitor restart: rebuild resident state from the target, remote state from `remotePages`. */
  reattach?: boolean;
  /** Per region, page indexes known to be in the store (reattach only). */
  remotePages?: number[][];
  prefetchMax?: number;
  evictBatch?: number;
  /** CPU numbers for the fault / eviction thread (validated by native/pager.ts). */
  faultCpus?: number[];
  evictCpus?: number[];
  /** Without faultCpus: move the fault thread to the faulting thread's CPU (default true). */
  followFaults?: boolean;
  onRequest?: (req: BridgeRequest) => void;
  onEvent?: (ev: PagerEvent) => void;
}

export interface NativeAddon {
  setErrorClass(cls: typeof ElasticmemError): void;
  // --- attach (native/attach.cc, native/inject.cc) ---
  acquireUffd(pid: number): AcquiredUffd;
  findTargetUffd(pid: number): AcquiredUffd | null;
  closeFd(fd: number): void;
  // --- pager (native/pager*.cc) ---
  pagerStart(opts: PagerStartOptions): unknown;
  pagerStats(h: unknown): PagerStatsRaw;
  pagerSetCap(h: unknown, capPages: number): void;
  /** Put hot-added guest RAM under a running pager (checked first: bad input changes nothing). */
  pagerAddRegions(h: unknown, regions: RegionSpec[]): void;
  /** Drain every page back, unregister; resolves through onEvent progress then the callback. */
  pagerDetach(h: unknown, done: (err: Error | null) => void): void;
  /** Stop serving without draining (monitor shutdown that leaves the target waiting). */
  pagerAbandon(h: unknown): void;
  pagerComplete(h: unknown, id: number, err: string | null, data?: (Buffer | null)[]): void;
  /** Exclusive flock on a per-target lock file (EM_ALREADY_ATTACHED when another live monitor holds it); returns the fd. */
  targetLock(path: string): number;
  /** getsockopt(SO_PEERCRED) on a connected Unix socket (native/peercred.cc). */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  // --- embedded memory store (native/memstore.cc) ---
  memStoreCreate(opts: { compress: boolean }): unknown;
  memStorePut(h: unknown, vm: string, pages: number[], data: Buffer[]): void;
  memStoreGet(h: unknown, vm: string, pages: number[]): (Buffer | null)[];
  memStoreDelete(h: unknown, vm: string, pages: number[]): void;
  memStoreDropVm(h: unknown, vm: string): void;
  memStoreList(h: unknown, vm: string): number[];
  memStoreUsage(h: unknown, vm?: string): { pages: number; bytes: number };
}
