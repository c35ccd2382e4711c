/**
 * The elasticmem daemon: one monitor for every VM on the host. Owns the sessions
 * (attached VMs), answers control requests, watches VM lifecycles, and keeps the state
 * file that lets a restarted daemon take its VMs over.
 */
import path from 'node:path';
import { ElasticmemError, syscallNote } from '../../native/errors.ts';
import { loadNative } from '../../native/index.ts';
import { Pager } from '../../native/pager.ts';
import type { PagerEvent } from '../../native/index.ts';
import type { PageStore } from '../../kvstore/types.ts';
import type { Request } from '../protocol.ts';
import { resolveTarget, type Target } from '../targets/index.ts';
import { domState } from '../targets/libvirt.ts';
import { processAlive, startTimeOf } from '../targets/proc.ts';
import { exactSize, formatSize, parseSize } from '../size.ts';
import { statsStream } from '../stats/stream.ts';
import type { Config } from './config.ts';
import { ControlServer, type RequestContext } from './server.ts';
import { Session, capPagesOf } from './session.ts';
import { StorePool } from './stores.ts';
import { resolveStoreSetup, checkCaFile, checkKeyFile, describeOptions, takeOverArgs, type StoreArgs, type StoreSetup } from './store-setup.ts';
import { readState, writeState, type StateEntry } from './state.ts';
import { LibvirtEvents, type LifecycleEvent } from './libvirt-events.ts';
import { log } from './log.ts';
import { growVm, pageAddedRam, checkRamMappings, describeBlocks, type GrowthHost } from './growth.ts';
import { MemoryRecords } from './memory-records.ts';
import { memoryFromRecord, recordOf, type GuestMemory } from '../targets/ramblocks.ts';
import { parseStoreUri } from '../../kvstore/uri.ts';
import { rememberStoreUri, scrubKnown, shownUri } from './secrets.ts';

const LIFECYCLE_POLL_MS = 1000;
/** How long to wait for libvirt's lifecycle event after QEMU is gone before calling it a crash. */
const EXIT_REASON_WAIT_MS = 3000;
/** How long resize follows a shrink before answering. */
const RESIZE_WAIT_MS = 30_000;
/** At stop: how long to let the handling of a QEMU that just ended finish, and to close each store. */
const STOP_STEP_MS = 2000;
/**
 * How long a stopping daemon lets operations in flight (a detach draining) finish.
 * (EM_STOP_INFLIGHT_MS: the tests' shorter limit.)
 */
const STOP_INFLIGHT_MS = Number(process.env.EM_STOP_INFLIGHT_MS) > 0 ? Number(process.env.EM_STOP_INFLIGHT_MS) : 60_000;
/**
 * At stop: a drain that brings no page back for this long (its store is down: the pager
 * waits on it without end) is given up (DRAIN GIVEN UP: the VM is stranded).
 * (EM_STOP_DRAIN_STALL_MS: the tests' shorter limit.)
 */
const STOP_DRAIN_STALL_MS = Number(process.env.EM_STOP_DRAIN_STALL_MS) > 0 ? Number(process.env.EM_STOP_DRAIN_STALL_MS) : 60_000;
/** After stop: if something still holds the event loop this long, say what, and exit anyway. */
const EXIT_WATCHDOG_MS = 3000;
/**
 * TEST-ONLY: hold each take-over this long before it starts, so that a test can look
 * at the state file while one is in progress (test/vm-restart.test.ts). 0 in use.
 */
const TEST_TAKEOVER_PAUSE_MS = Math.max(0, Number(process.env.EM_TEST_TAKEOVER_PAUSE_MS) || 0);

export class Daemon {
  private sessions = new Map<string, Session>();
  /** Specs with an attach in flight: a second attach of the same VM is refused at once. */
  private attaching = new Set<string>();
  /** Attach requests in flight: a stop waits for them, so none ends after the state file was written. */
  private attachesInFlight = new Set<Promise<unknown>>();
  private stores = new StorePool();
  private records: MemoryRecords;
  private server: ControlServer;
  private events = new LibvirtEvents('lifecycle');
  private deviceEvents = new LibvirtEvents('device-added');
  private poller?: NodeJS.Timeout;
  /**
   * The take-over of the VMs a previous daemon left. Requests other than ping wait for
   * it: a client's attach of a VM not yet taken over would otherwise be a fresh attach
   * that deletes the pages the VM's evicted memory lives in.
   */
  private restoring: Promise<void> = Promise.resolve();
  private closing = false;
  /** What growth.ts needs of the daemon. */
  private readonly growth: GrowthHost = {
    saveState: () => this.saveState(),
    closing: () => this.closing,
  };

  constructor(readonly config: Config, readonly socketPath: string) {
    rememberStoreUri(config.store);
    for (const v of Object.values(config.vms)) rememberStoreUri(v.store);
    this.server = new ControlServer(socketPath, (req, ctx) => this.handleScrubbed(req, ctx));
    this.records = new MemoryRecords(path.join(path.dirname(config.state), 'memory'));
  }

  async start(): Promise<void> {
    await this.server.listen();
    this.events.on('lifecycle', (ev: LifecycleEvent) => this.onLifecycle(ev));
    this.events.on('warning', (msg: string) => log('-', 'warning', `libvirt lifecycle events: ${msg}`));
    this.events.start();
    this.deviceEvents.on('device-added', (ev: LifecycleEvent) => this.onDeviceAdded(ev));
    this.deviceEvents.on('warning', (msg: string) => log('-', 'warning', `libvirt device events: ${msg}`));
    this.deviceEvents.start();
    this.poller = setInterval(() => void this.pollLifecycle(), LIFECYCLE_POLL_MS);
    log('-', 'daemon started', `socket ${this.socketPath}, default store ${shownUri(this.config.store)}, config ${this.config.source}`);
    this.restoring = this.restore();
    await this.restoring;
  }

  // ---------------------------------------------------------------- requests

  /**
   * Every answer leaves through here: an error message that quotes a store URI (the
   * store's own, a client library's) has its password masked, like the log.
   */
  private async handleScrubbed(req: Request, ctx: RequestContext): Promise<unknown> {
    const given = typeof req.args.store === 'string' ? req.args.store : undefined;
    rememberStoreUri(given);
    try {
      return await this.handle(req, ctx);
    } catch (e) {
      if (e instanceof Error) e.message = scrubKnown(e.message, [given]);
      throw e;
    }
  }

  private async handle(req: Request, ctx: RequestContext): Promise<unknown> {
    const a = req.args;
    if (req.op !== 'ping') await this.restoring;
    switch (req.op) {
      case 'ping': return { pid: process.pid, vms: this.sessions.size, protocol: 1 };
      case 'list': return { vms: [...this.sessions.values()].map((s) => s.summary()) };
      case 'attach': {
        if (this.closing) throw new ElasticmemError('the daemon is stopping; attach once it (or the next one) runs', 'DAEMON_STOPPING');
        const p = this.attach(a.vm as string, a.local as string | undefined,
          { uri: a.store as string | undefined, keyFile: a.storeKey as string | undefined, compress: a.compress as boolean | undefined, tlsCaFile: a.tlsCa as string | undefined });
        this.attachesInFlight.add(p);
        return p.finally(() => this.attachesInFlight.delete(p));
      }
      case 'resize': return this.resize(a.vm as string, a.local as string, ctx);
      case 'grow': return this.grow(a.vm as string, a.size as string, a.wait !== false, a.dimm === true);
      case 'detach': return this.detach(a.vm as string, ctx);
      case 'stats': return this.find(a.vm as string, true).stats();
      case 'watch': return this.watch(a.vm as string, (a.intervalMs as number | undefined) ?? 1000, ctx);
    }
  }

  private findOrNull(spec: string): Session | null {
    for (const s of this.sessions.values()) if (s.matches(spec)) return s;
    return null;
  }

  /** The session for what the user typed (name, UUID, pid:N, qmp:path). */
  private find(spec: string, mustBeLive = false): Session {
    const s = this.findOrNull(spec);
    if (!s) throw new ElasticmemError(`VM '${spec}' is not attached; see: elasticmem list`, 'NOT_ATTACHED');
    if (mustBeLive && s.state === 'waiting') {
      throw new ElasticmemError(`VM '${s.name}' waits to be taken over from the previous daemon (${s.note}); first: elasticmem attach ${s.target.spec}`, 'VM_NOT_TAKEN_OVER');
    }
    if (mustBeLive && (s.state === 'crashed' || !s.pager)) {
      throw new ElasticmemError(`VM '${s.name}' is not running any more (${s.state}); its stored pages are kept until: elasticmem detach ${s.target.spec}`, 'VM_NOT_RUNNING');
    }
    return s;
  }

  private checkCap(bytes: number, guestRam: number, name: string): void {
    if (bytes < this.config.limits.minLocal) {
      throw new ElasticmemError(`--local ${formatSize(bytes)} is below the minimum of ${exactSize(this.config.limits.minLocal)} (limits.minLocal); the guest kernel alone needs more`, 'CAP_TOO_SMALL');
    }
    if (bytes > guestRam) {
      throw new ElasticmemError(`--local ${formatSize(bytes)} is more than the ${formatSize(guestRam)} of RAM VM '${name}' has; choose at most ${exactSize(guestRam)}`, 'CAP_TOO_LARGE');
    }
  }

  /**
   * storeArgs: what the request asked for (store-setup.ts; null: none, whatever the
   * config says: a take-over of a VM attached without). expect: the take-over of a
   * state-file entry must find that very QEMU.
   */
  async attach(spec: string, local: string | undefined, storeArgs: StoreArgs, expect?: { vmId: string; pid: number; replacing: Session }): Promise<unknown> {
    // Validate everything that needs no VM first: bad input changes nothing.
    const localArg = local !== undefined ? parseSize(local, '--local') : undefined;
    if (storeArgs.uri !== undefined) parseStoreUri(storeArgs.uri);
    for (const [file, flag] of [[storeArgs.keyFile, '--store-key'], [storeArgs.tlsCaFile, '--tls-ca']] as const) {
      if (typeof file === 'string' && !file.startsWith('/')) throw new ElasticmemError(`${flag} ${JSON.stringify(file)}: give the file's absolute path (the CLI resolves a relative one)`, 'BAD_REQUEST');
    }
    // (what the request names alone, the config aside: the rest is checked once the VM,
    // and so its own config entry, is known)
    if (storeArgs.uri !== undefined) await resolveStoreSetup({ ...storeArgs, uri: storeArgs.uri, keyFile: storeArgs.keyFile ?? null, tlsCaFile: storeArgs.tlsCaFile ?? null }, undefined, this.config, spec);
    else {
      if (typeof storeArgs.keyFile === 'string') await checkKeyFile(storeArgs.keyFile);
      if (typeof storeArgs.tlsCaFile === 'string') checkCaFile(storeArgs.tlsCaFile);
    }
    const existing = this.findOrNull(spec);
    if (existing && existing.state === 'waiting' && !expect) {
      try {
        return await this.takeOver(existing, spec, local, storeArgs, true);
      } catch (e) {
        this.saveState();
        throw e;
      }
    }
    if (existing && (existing.state === 'crashed' || existing.state === 'orphaned')) {
      throw new ElasticmemError(`VM '${existing.name}' has pages kept from an earlier QEMU that ended (${existing.state}); delete them first with: elasticmem detach ${existing.target.spec}`, 'ALREADY_ATTACHED');
    }
    if (existing && existing !== expect?.replacing) throw new ElasticmemError(`VM '${existing.name}' is already attached (store ${existing.storeShown}, local ${formatSize(existing.capBytes)}); use resize to change the cap, or detach first`, 'ALREADY_ATTACHED');
    if (this.attaching.has(spec)) throw new ElasticmemError(`VM '${spec}' is being attached right now`, 'ALREADY_ATTACHED');
    this.attaching.add(spec);
    try {
      // A QEMU left holding the uffd of a daemon that died may not answer its monitor
      // (its main thread waiting on a page): then the record names the VM.
      // A QEMU that is not running is attached only to be taken over: one this daemon's
      // predecessor served (the state file's entry, or its record of the RAM), holding
      // the uffd it left (not, say, QEMU's own for an incoming postcopy migration).
      const servedBefore = (pid: number) => {
        if (!holdsLeftUffd(pid)) return false;
        if (expect?.pid === pid) return true;
        const start = startTimeOf(pid);
        return start !== null && this.records.vmIdOf(pid, start) !== null;
      };
      const target = await resolveTarget(spec, (pid, start) => (holdsLeftUffd(pid) ? this.records.vmIdOf(pid, start) : null), servedBefore);
      if (expect && (target.vmId !== expect.vmId || target.pid !== expect.pid)) {
        throw new ElasticmemError(`'${spec}' now names QEMU pid ${target.pid} (${target.vmId}), not pid ${expect.pid} (${expect.vmId}) that the previous daemon served; not taking it over`, 'VM_CHANGED');
      }
      // (same process: pid and start time; a crashed entry's pid may belong to a new QEMU by now)
      // (the waiting entry a take-over replaces aside)
      const dup = [...this.sessions.values()].find((s) => s !== expect?.replacing && (s.vmId === target.vmId || (s.target.pid === target.pid && s.target.startTime === target.startTime)));
      if (dup) throw new ElasticmemError(`VM '${target.name}' is already attached (as '${dup.name}'); use resize to change the cap, or detach first`, 'ALREADY_ATTACHED');
      const live = [...this.sessions.values()].filter((s) => s !== expect?.replacing && s.state !== 'crashed' && s.state !== 'orphaned').length;
      if (live >= this.config.limits.maxVms) throw new ElasticmemError(`${live} VMs are attached, the limit is ${this.config.limits.maxVms} (limits.maxVms in the config)`, 'TOO_MANY_VMS');
      // Per-VM settings from the config, under whichever name the operator used there.
      const override = this.config.vms[spec] ?? this.config.vms[target.name] ?? this.config.vms[target.vmId];
      const capBytes = localArg ?? override?.local;
      if (capBytes === undefined) throw new ElasticmemError(`attach ${target.name}: --local SIZE is required (the config has no vms.${target.name}.local); e.g. --local 512M`, 'BAD_REQUEST');
      // Each store option: the request's, else the VM's in the config, else the default.
      const setup = await resolveStoreSetup(storeArgs, override, this.config, target.name);
      const storeUri = setup.uri;
      // A QEMU that already holds a userfaultfd was attached by a daemon that died: take it over.
      const left = holdsLeftUffd(target.pid);
      if (expect && !left) {
        // The previous daemon had drained it back (it died while deleting the obsolete
        // copies, or after): the VM runs without elasticmem. Attaching it again would
        // squeeze a VM its operator detached.
        throw new ElasticmemError(`QEMU pid ${target.pid} of '${target.name}' holds no userfaultfd of a previous daemon: its detach had finished; nothing to take over`, 'NOTHING_TO_TAKE_OVER');
      }
      const store = await this.stores.acquire(setup);
      const session = new Session(target, setup, capBytes);
      try {
        if (left && !store.capabilities.persistent) {
          // Taking over means trusting the store for every page that is not resident. A
          // fresh non-persistent store is empty: those pages would come back as zeros.
          throw new ElasticmemError(`QEMU pid ${target.pid} of '${target.name}' still holds a userfaultfd from a monitor that died; its evicted pages are in the store that monitor used. Take it over with that (persistent) store: elasticmem attach ${spec} --local SIZE --store <the same URI> (and the same --store-key if its pages were encrypted, --tls-ca for a private CA). ${shownUri(storeUri)} cannot hold pages across daemons`, 'NEEDS_PREVIOUS_STORE');
        }
        if (left) await this.refuseAnotherStore(target, spec, storeUri, store, expect?.replacing);
        const memory = left ? await this.memoryToTakeOver(session) : await target.discover();
        this.checkCap(capBytes, memory.guestRamBytes, target.name);
        session.memory = memory;
        session.store = store;
        session.pager = await Pager.attach({ pid: target.pid, startTime: target.startTime, vmId: target.vmId, regions: memory.regions, capPages: capPagesOf(capBytes), store, reattach: left, ...this.config.pager });
      } catch (e) {
        await this.stores.release(setup);
        throw e;
      }
      const memory = session.memory;
      session.state = 'attached';
      this.sessions.set(target.vmId, session);  // (a take-over: in place of its waiting entry)
      this.wire(session);
      this.saveState();
      log(target.name, left ? 'attached (took over the userfaultfd left by a previous daemon)' : 'attached',
        `pid ${target.pid}, ${memory.regions.length} RAM blocks${session.memoryRecorded ? ' as recorded by the previous daemon' : ''} (${describeBlocks(memory.regions)}), local ${formatSize(capBytes)} of ${formatSize(memory.guestRamBytes)}, store ${session.storeShown}${describeOptions(setup)}`);
      // Taken over from the record: QEMU may have gained RAM while no daemon watched.
      if (left && session.memoryRecorded) void pageAddedRam(this.growth, session, 'found after the take-over', 'the take-over');
      return { ...session.summary(), tookOver: left, regions: memory.regions.map((r) => ({ name: r.name, bytes: r.length, kind: r.kind })) };
    } finally {
      this.attaching.delete(spec);
    }
  }

  /** Pager events -> session state and log lines. */
  private wire(s: Session): void {
    const p = s.pager!;
    p.on('store-down', (ev: { message: string }) => {
      s.storeState = 'retrying'; s.storeError = s.scrub(ev.message);
      log(s.name, 'store down', `${s.storeError}; faults wait and retry, evictions paused`);
    });
    p.on('store-up', () => {
      s.storeState = 'ok'; s.storeError = '';
      log(s.name, 'store up', 'faults and evictions resumed');
    });
    p.on('page-lost', (ev: { message: string; pages?: number[] }) => {
      s.storeState = 'lost'; s.storeError = s.scrub(ev.message); s.lostPages += ev.pages?.length ?? 0;
      log(s.name, 'PAGES LOST', `${s.storeError}${ev.pages ? ` (${ev.pages.length} pages)` : ''}; the vCPUs that touch them wait (asked for again every 2 s), nothing was zero-filled`);
    });
    p.on('error', (ev: PagerEvent) => log(s.name, 'pager error', s.scrub(ev.message) + syscallNote(ev)));
    p.on('target-exited', () => void this.onTargetGone(s));
  }

  /**
   * Requests that queue behind a VM's operations fail at once while it is being
   * detached: a drain waiting on a store that is down could hold them, silently, for as
   * long as the store stays down.
   */
  private notDetaching(s: Session): Session {
    if (s.state === 'detaching') throw new ElasticmemError(`VM '${s.name}' is being detached (its pages are coming back; see elasticmem list); try again once that has finished`, 'VM_BUSY');
    return s;
  }

  async resize(spec: string, local: string, ctx: RequestContext): Promise<unknown> {
    const bytes = parseSize(local, '--local');
    const s = this.notDetaching(this.find(spec, true));
    return s.serial(async () => {
      if (s.state !== 'attached') throw new ElasticmemError(`VM '${s.name}' is ${s.state}; cannot resize now`, 'VM_BUSY');
      this.checkCap(bytes, s.memory!.guestRamBytes, s.name);
      const before = s.capBytes;
      const cap = capPagesOf(bytes);
      s.pager!.setCap(cap);
      s.capBytes = bytes;
      this.saveState();
      log(s.name, 'resized', `local ${formatSize(before)} -> ${formatSize(bytes)}`);
      // A shrink evicts at once: follow it (progress to the client) until resident
      // pages are down near the new cap, or give up waiting (eviction goes on anyway;
      // it pauses while the store is down).
      const slack = Math.max(256, Math.floor(cap / 16));
      const start = s.pager!.stats().residentPages;
      let resident = start;
      const deadline = Date.now() + RESIZE_WAIT_MS;
      while (resident > cap + slack && Date.now() < deadline && s.state === 'attached' && !ctx.signal.aborted) {
        ctx.stream({ progress: { done: Math.max(0, start - resident), total: start - cap } });
        await new Promise((r) => setTimeout(r, 200));
        if (s.state !== 'attached' || !s.pager || s.pager.isClosed) break;  // QEMU ended meanwhile: the cap was set all the same
        resident = s.pager.stats().residentPages;
      }
      if (start > cap + slack) ctx.stream({ progress: { done: Math.max(0, start - resident), total: start - cap } });
      return { ...s.summary(), previousLocalBytes: before, reachedCap: resident <= cap + slack };
    });
  }

  async grow(spec: string, sizeText: string, wait: boolean, dimm = false): Promise<unknown> {
    const bytes = parseSize(sizeText, 'SIZE');
    return growVm(this.growth, this.notDetaching(this.find(spec, true)), bytes, wait, dimm);
  }

  /**
   * A take-over trusts its store for every page QEMU does not hold: one that holds no
   * page of the VM, while the previous daemon used another (the state file's entry, else
   * the record of QEMU's RAM says which), would turn every evicted page into zeros. A
   * store given under another URI that does hold the VM's pages (the same server
   * written differently, or pages moved) is taken.
   */
  private async refuseAnotherStore(target: Target, spec: string, uri: string, store: PageStore, waiting?: Session): Promise<void> {
    const before = waiting ? waiting.storeUri : this.records.storeOf(target.pid, target.startTime, target.vmId);
    if (before === null || before === uri) return;
    if ((await store.list(target.vmId)).length > 0) return;
    throw new ElasticmemError(`the previous daemon kept the evicted pages of '${target.name}' in ${shownUri(before)}; ${shownUri(uri)} holds none of its pages, and taking over with it would turn every page that was evicted into zeros. Take it over with that store: elasticmem attach ${spec} --local SIZE --store ${shownUri(before)} (with its --store-key, if any)`, 'WRONG_STORE');
  }

  /**
   * Where the RAM of a QEMU to take over is: from the record the previous daemon kept
   * (memory-records.ts), checked against the process, without asking QEMU, whose
   * main thread may be waiting on a page right now; else from QMP (which may then time out).
   */
  private async memoryToTakeOver(s: Session): Promise<GuestMemory> {
    const t = s.target as Target;
    const rec = this.records.read(t.pid, t.startTime, t.vmId);
    if (rec) {
      try {
        const m = memoryFromRecord(t.pid, rec);
        s.memoryRecorded = true;
        return m;
      } catch (e) {
        log(s.name, 'warning', `the record of its RAM blocks does not match QEMU pid ${t.pid} now (${(e as Error).message}); asking QEMU`);
      }
    }
    try {
      return await t.discover();
    } catch (e) {
      if ((e as ElasticmemError).code !== 'QMP_TIMEOUT') throw e;
      throw new ElasticmemError(`${(e as Error).message}. QEMU pid ${t.pid} holds a userfaultfd from a monitor that died, so its main thread may be waiting on a page until it is taken over, and there is ${rec ? 'no usable' : 'no'} record of its RAM blocks in ${this.records.dir} to take it over without asking QEMU`, 'QMP_TIMEOUT');
    }
  }

  /**
   * Take over a VM left `waiting` (by the previous daemon), with what that daemon used
   * unless told otherwise; on failure it stays waiting, with the reason. `asked`: a
   * user's attach (not the restore at start), which goes on as a fresh attach when there
   * is nothing to take over.
   */
  private async takeOver(w: Session, spec: string, local?: string, storeArgs: StoreArgs = {}, asked = false): Promise<unknown> {
    // The waiting entry stays in the map (so in every state file written meanwhile, by
    // other VMs' requests) until the attach replaces it: a daemon killed during a
    // take-over must leave the VM listed for the next one.
    if (w.takingOver) throw new ElasticmemError(`VM '${w.name}' is being taken over right now`, 'ALREADY_ATTACHED');
    w.takingOver = true;
    try {
      if (TEST_TAKEOVER_PAUSE_MS > 0) {
        log(w.name, 'take-over held', `${TEST_TAKEOVER_PAUSE_MS} ms (EM_TEST_TAKEOVER_PAUSE_MS, for tests)`);
        await new Promise((r) => setTimeout(r, TEST_TAKEOVER_PAUSE_MS));
      }
      return await this.attach(spec, local ?? String(w.capBytes), takeOverArgs(w.storeSetup, storeArgs), { vmId: w.vmId, pid: w.target.pid, replacing: w });
    } catch (e) {
      if ((e as ElasticmemError).code !== 'NOTHING_TO_TAKE_OVER') {
        w.note = `take-over failed: ${w.scrub((e as Error).message)}`;
        throw e;
      }
      await this.forgetDetached(w);
      if (!asked) throw e;
    } finally {
      w.takingOver = false;
    }
    // The VM had been detached: what the user asked for is a fresh attach, with what they gave.
    return this.attach(spec, local, storeArgs);
  }

  /**
   * What a drain given up at stop leaves: a store that does not keep pages across daemons
   * cannot be trusted by a take-over (a page it dropped would read back as zeros), so no
   * daemon can resume the VM. Said plainly, with what is left to do.
   */
  private strandedNote(s: Session, e: Error): string {
    return `${s.scrub(e.message)}. ${s.storeShown} does not keep pages across daemons, so no daemon can take this VM over: it waits on its userfaultfd for good; restart it (e.g. virsh destroy and start). A persistent store (file://, redis with AOF) avoids this`;
  }

  /** A state-file entry whose VM had been detached after all: dropped, with any stored copies left. */
  private async forgetDetached(w: Session): Promise<void> {
    if (this.sessions.get(w.vmId) === w) this.sessions.delete(w.vmId);
    this.saveState();
    try {
      const store = await this.stores.acquire(w.storeSetup);
      try { await store.dropVm(w.vmId); } finally { await this.stores.release(w.storeSetup); }
    } catch (e) {
      log(w.name, 'warning', `could not delete its obsolete stored pages: ${w.scrub((e as Error).message)}`);
    }
    log(w.name, 'not taken over', 'its detach had finished before the previous daemon ended; the VM runs without elasticmem');
  }

  /** A device was added to a libvirt domain behind our back: page its RAM if it has any. */
  private onDeviceAdded(ev: LifecycleEvent): void {
    const s = [...this.sessions.values()].find((x) => x.target.kind === 'libvirt' && x.name === ev.domain);
    if (s) void pageAddedRam(this.growth, s, ev.event, `device ${ev.event} was added`);
  }

  async detach(spec: string, ctx: RequestContext): Promise<unknown> {
    const s = this.notDetaching(this.find(spec));
    return s.serial(async () => {
      // A detach queued behind another one (the user ran it twice) finds the session gone.
      if (this.sessions.get(s.vmId) !== s) throw new ElasticmemError(`VM '${spec}' is not attached (detached meanwhile); see: elasticmem list`, 'NOT_ATTACHED');
      if (s.state === 'waiting') {
        // Its QEMU is alive and waits on its userfaultfd; the pages it needs are in the
        // store. Deleting them would break the VM for good.
        throw new ElasticmemError(`VM '${s.name}' waits to be taken over from the previous daemon; take it over first (elasticmem attach ${s.target.spec}), then detach`, 'VM_NOT_TAKEN_OVER');
      }
      if (s.state === 'crashed' || s.state === 'orphaned' || !s.pager) {
        // QEMU is gone: what remains is its stored pages. Deleting them is this command's job.
        const store = await this.stores.acquire(s.storeSetup);
        try { await store.dropVm(s.vmId); } finally { await this.stores.release(s.storeSetup); }
        if (s.store) await this.stores.release(s.storeSetup);
        s.store = undefined;  // (released once: the pool shares it with other VMs)
        this.sessions.delete(s.vmId);
        this.saveState();
        log(s.name, 'detached', `QEMU was gone; its stored pages were deleted from ${s.storeShown}`);
        return { name: s.name, vm: s.vmId, drained: false, deletedStoredPages: true };
      }
      if (s.state !== 'attached') throw new ElasticmemError(`VM '${s.name}' is ${s.state}`, 'VM_BUSY');
      s.state = 'detaching';
      const t0 = Date.now();
      const onProgress = (ev: { done?: number; total?: number }) => ctx.stream({ progress: { done: ev.done ?? 0, total: ev.total ?? 0 } });
      // (QEMU's exit may end the session meanwhile: handleTargetGone drops s.pager)
      const pager = s.pager;
      pager.on('progress', onProgress);
      try {
        await pager.detach();
        s.endedHow = 'it was detached';  // (before the stored copies are deleted: a watch may ask meanwhile)
      } catch (e) {
        if (s.state === 'detaching') s.state = 'attached';
        log(s.name, 'detach failed', `${(e as Error).message}${s.state === 'attached' ? '; still attached' : ''}`);
        throw e;
      } finally {
        pager.off('progress', onProgress);
      }
      if (s.ended) return { name: s.name, vm: s.vmId, drained: true, ms: Date.now() - t0 };  // QEMU ended meanwhile; its handling cleaned up
      s.ended = true;
      // Every page is back in the VM: the stored copies are obsolete. If they cannot be
      // deleted the detach still stands; the caller is told, as they take store space.
      let storedPagesLeft: string | undefined;
      await s.store!.dropVm(s.vmId).catch((e: Error) => {
        storedPagesLeft = s.scrub(e.message);
        log(s.name, 'warning', `could not delete stored pages: ${storedPagesLeft}`);
      });
      await this.stores.release(s.storeSetup);
      this.sessions.delete(s.vmId);
      this.records.remove(s.target.pid, s.target.startTime);
      this.saveState();
      const ms = Date.now() - t0;
      log(s.name, 'detached', `all pages drained back in ${ms} ms; the VM runs without elasticmem`);
      return { name: s.name, vm: s.vmId, drained: true, ms, ...(storedPagesLeft ? { storedPagesLeft } : {}) };
    });
  }

  private async watch(spec: string, intervalMs: number, ctx: RequestContext): Promise<unknown> {
    const s = this.find(spec, true);
    if (!(intervalMs >= 100 && intervalMs <= 60_000)) throw new ElasticmemError('intervalMs must be within 100..60000', 'BAD_REQUEST');
    // (a client that left while the request waited for the restore: its abort has fired)
    if (ctx.signal.aborted) return { name: s.name, ended: 'client' };
    await new Promise<void>((resolve) => {
      const sub = statsStream(() => s.stats(), intervalMs).subscribe({
        next: (sample) => {
          ctx.stream(sample);
          if (!this.sessions.has(s.vmId) || s.state === 'crashed') { sub.unsubscribe(); resolve(); }
        },
        error: () => resolve(),
      });
      ctx.signal.addEventListener('abort', () => { sub.unsubscribe(); resolve(); }, { once: true });
    });
    // ended: 'client' (it stopped watching), else 'vm' with why the VM's paging ended.
    if (ctx.signal.aborted) return { name: s.name, ended: 'client' };
    return { name: s.name, ended: 'vm', why: s.endedHow || s.note || `it is ${s.state}` };
  }

  // ---------------------------------------------------------------- lifecycle

  private onLifecycle(ev: LifecycleEvent): void {
    for (const s of this.sessions.values()) {
      if (s.target.kind === 'libvirt' && s.name === ev.domain && ev.event === 'Stopped') void this.onTargetGone(s);
    }
  }

  private async pollLifecycle(): Promise<void> {
    for (const s of this.sessions.values()) {
      if ((s.state === 'attached' || s.state === 'detaching') && !processAlive(s.target.pid, s.target.startTime)) void this.onTargetGone(s);
      checkRamMappings(this.growth, s);
      if (s.state === 'waiting' && !processAlive(s.target.pid, s.target.startTime)) this.endedBeforeTakeOver(s);
    }
  }

  /**
   * The QEMU of a VM waiting to be taken over ended: its pages stay in the store (this
   * daemon holds no reference to it for this VM) until a detach deletes them.
   */
  private endedBeforeTakeOver(s: Session): void {
    s.state = 'crashed';
    s.note = `QEMU pid ${s.target.pid} ended before it was taken over; stored pages kept in ${s.storeShown} until: elasticmem detach ${s.target.spec}`;
    this.saveState();
    log(s.name, 'QEMU ended while waiting for a take-over', s.note);
  }

  /** (per session: a take-over's new session is not the waiting one it replaced) */
  private handlingExit = new Map<Session, Promise<void>>();

  /** QEMU is gone. A normal shutdown deletes the VM's pages; a crash keeps them. */
  private onTargetGone(s: Session): Promise<void> {
    if (s.state === 'crashed' || s.state === 'orphaned' || this.closing) return Promise.resolve();
    if (processAlive(s.target.pid, s.target.startTime)) return Promise.resolve();
    if (s.state === 'waiting') {
      this.endedBeforeTakeOver(s);
      return Promise.resolve();
    }
    const running = this.handlingExit.get(s);
    if (running) return running;
    const p = this.handleTargetGone(s).finally(() => this.handlingExit.delete(s));
    this.handlingExit.set(s, p);
    return p;
  }

  private async handleTargetGone(s: Session): Promise<void> {
    if (s.ended) return;  // a detach finished first
    {
      // Nothing to serve any more: stop the pager's threads (a drain in flight ends too).
      if (s.pager && !s.pager.isClosed) s.pager.abandon();
      s.endedHow = `its QEMU (pid ${s.target.pid}) ended`;  // (made precise below, once the reason is known)
      let reason = 'unknown';
      if (s.target.kind === 'libvirt') {
        const deadline = Date.now() + EXIT_REASON_WAIT_MS;
        // A daemon that is stopping does not wait for the reason: it records the VM as
        // crashed (pages kept), which the next daemon shows and `detach` clears.
        while (!this.closing) {
          const ev = this.events.last.get(s.name);
          if (ev && ev.event === 'Stopped' && ev.at >= s.attachedAt) { reason = ev.detail.toLowerCase(); break; }
          try {
            const st = await domState(s.name);
            if (st.state === 'shut off' && st.reason) { reason = st.reason.toLowerCase(); break; }
          } catch { /* transient domain gone: wait for the event */ }
          if (Date.now() > deadline) break;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      const normal = isNormalEnd(reason);
      if (s.ended) return;  // a detach finished while we waited for the reason
      if (normal) {
        s.ended = true;
        await s.store?.dropVm(s.vmId).catch((e: Error) => log(s.name, 'warning', `could not delete stored pages: ${s.scrub(e.message)}`));
        // (only the reference this session holds: the pool shares the store with other VMs)
        if (s.store) await this.stores.release(s.storeSetup);
        s.store = undefined;
        s.endedHow = `its QEMU ended (${reason}); it was detached`;
        if (this.sessions.get(s.vmId) === s) this.sessions.delete(s.vmId);
        this.saveState();
        log(s.name, 'domain shut down', `reason ${reason}; detached and its stored pages deleted`);
      } else {
        s.state = 'crashed';
        s.pager = undefined;
        s.note = `QEMU pid ${s.target.pid} ended (${reason}); stored pages kept in ${s.storeShown} until: elasticmem detach ${s.target.spec}`;
        s.endedHow = `its QEMU crashed: ${s.note}`;
        this.saveState();
        log(s.name, reason === 'unknown' && this.closing ? 'QEMU ended while the daemon stopped' : 'QEMU crashed', s.note);
      }
    }
  }

  // ---------------------------------------------------------------- restart

  private saveState(): void {
    const entries: StateEntry[] = [...this.sessions.values()].filter((s) => s.state !== 'attaching').map((s) => ({
      spec: s.target.spec, name: s.name, kind: s.target.kind, vmId: s.vmId, pid: s.target.pid, startTime: s.target.startTime,
      store: s.storeUri, ...(s.storeSetup.keyFile ? { storeKeyFile: s.storeSetup.keyFile } : {}),
      ...(s.storeSetup.compress ? { compress: true } : {}), ...(s.storeSetup.tlsCaFile ? { tlsCaFile: s.storeSetup.tlsCaFile } : {}), capBytes: s.capBytes, status: s.state === 'crashed' || s.state === 'orphaned' ? 'crashed' : 'attached',
    }));
    try { writeState(this.config.state, entries); } catch (e) { log('-', 'warning', `cannot write state file ${this.config.state}: ${(e as Error).message}`); }
    this.records.sweep();  // (records of QEMUs that ended)
    for (const s of this.sessions.values()) {
      if (s.state !== 'attached' || !s.memory) continue;
      const rec = recordOf(s.memory);
      const text = JSON.stringify([rec, s.storeUri]);
      if (text === s.recordText) continue;
      try {
        this.records.write(s.target.pid, s.target.startTime, s.vmId, rec, s.storeUri);
        s.recordText = text;
      } catch (e) {
        log(s.name, 'warning', `cannot write the record of its RAM blocks in ${this.records.dir}: ${(e as Error).message}; a take-over will have to ask QEMU`);
      }
    }
  }

  /** Take over the VMs a previous daemon left (state file), or remember their pages. */
  private async restore(): Promise<void> {
    this.records.sweep();
    const entries = readState(this.config.state, (msg) => log('-', 'warning', msg));
    for (const e of entries) rememberStoreUri(e.store);
    const pending: [StateEntry, Session][] = [];
    for (const e of entries) {
      if (this.sessions.has(e.vmId)) continue;  // (a state file listing a VM twice)
      const stub = { kind: e.kind as Target['kind'], spec: e.spec, name: e.name, vmId: e.vmId, pid: e.pid, startTime: e.startTime, aliases: [e.spec, e.name, e.vmId, `pid:${e.pid}`] };
      const alive = processAlive(e.pid, e.startTime);
      if (e.status === 'crashed' || !alive) {
        const s = new Session(stub, setupOf(e), e.capBytes);
        s.state = 'crashed';
        s.note = `QEMU pid ${e.pid} is gone; stored pages kept in ${s.storeShown} until: elasticmem detach ${e.spec}`;
        this.sessions.set(e.vmId, s);
        log(e.name, 'restored as crashed', s.note);
        continue;
      }
      if (e.store === 'memory:') {
        if (!holdsLeftUffdOrGone(e.pid)) {
          // Drained back before the previous daemon ended: nothing was lost with it.
          log(e.name, 'not taken over', 'its detach had finished before the previous daemon ended; the VM runs without elasticmem');
          continue;
        }
        const s = new Session(stub, { uri: e.store }, e.capBytes);
        s.state = 'orphaned';
        s.note = `the previous daemon kept this VM's evicted pages in its own memory (memory:), which died with it; the VM cannot be resumed safely. Use a persistent store (file://, redis://) to survive daemon restarts`;
        this.sessions.set(e.vmId, s);
        log(e.name, 'CANNOT RE-ATTACH', s.note);
        continue;
      }
      // Listed (and kept in the state file) as waiting until its take-over succeeds.
      const w = new Session(stub, setupOf(e), e.capBytes);
      w.state = 'waiting';
      w.note = 'being taken over';
      this.sessions.set(e.vmId, w);
      pending.push([e, w]);
    }
    for (const [e, w] of pending) {
      try {
        const r = await this.takeOver(w, e.spec);
        log(e.name, 're-attached after daemon restart', `tookOver=${(r as { tookOver: boolean }).tookOver}`);
      } catch (err) {
        if ((err as ElasticmemError).code === 'NOTHING_TO_TAKE_OVER') continue;  // (forgetDetached said so)
        log(e.name, 're-attach failed', `${(err as Error).message}; it waits on its userfaultfd: retry with elasticmem attach ${e.spec}`);
      }
    }
    this.saveState();
  }

  // ---------------------------------------------------------------- shutdown

  /**
   * Daemon stop (SIGTERM/SIGINT). VMs on a persistent store are left waiting on their
   * userfaultfd for the next daemon (state file kept); VMs on `memory:` are drained back
   * first, since their pages would die with this process.
   */
  async stop(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.poller);
    await Promise.all([this.events.stop(), this.deviceEvents.stop(), this.server.close()]);
    // A QEMU that ended just before the signal: let its handling finish (briefly).
    await settleWithin([...this.handlingExit.values()], STOP_STEP_MS);
    // An attach in flight (its client is gone with the server) finishes first, so its VM
    // is drained or left for the next daemon like the others, and in the state file.
    await settleWithin([...this.attachesInFlight], STOP_INFLIGHT_MS);
    // Operations in flight finish first: a detach drains on (its store must stay open
    // until every page is back; it ends at once if QEMU dies), resize and grow stop
    // following their VM now that their client is gone.
    // Bounded: a detach whose store stopped answering would otherwise hold the stop
    // forever. A VM on a persistent store still detaching then is left for the next
    // daemon like the others (its pages are in the store or already back).
    await settleWithin([...this.sessions.values()].map((s) => s.serial(async () => undefined)), STOP_INFLIGHT_MS);
    for (const s of [...this.sessions.values()]) {
      if (s.state !== 'detaching' || !s.pager || s.pager.isClosed) continue;
      if (s.store?.capabilities.persistent) {
        s.pager.abandon();
        log(s.name, 'left for the next daemon', `its detach had not finished after ${STOP_INFLIGHT_MS / 1000} s; QEMU keeps its userfaultfd, pages stay in ${s.storeShown}`);
        continue;
      }
      // Its pages die with this process: the detach goes on for as long as it brings
      // pages back, as the drain of an attached VM below does.
      log(s.name, 'finishing its detach before daemon exit', 'its store does not outlive the daemon');
      try {
        await untilStalled(s.pager, s.serial(async () => undefined), STOP_DRAIN_STALL_MS);
      } catch (e) {
        s.pager.abandon();
        log(s.name, 'DRAIN GIVEN UP', this.strandedNote(s, e as Error));
      }
    }
    for (const s of [...this.sessions.values()]) {
      if (!s.pager || s.pager.isClosed || s.state !== 'attached') continue;
      if (!processAlive(s.target.pid, s.target.startTime)) {
        // QEMU is gone (destroyed, crashed) and the daemon has not handled it yet: there
        // is nothing to drain back into, and a drain would only wait on a dead target.
        s.pager.abandon();
        s.pager = undefined;
        if (!s.store?.capabilities.persistent) {
          this.sessions.delete(s.vmId);
          log(s.name, 'QEMU ended', `pid ${s.target.pid} is gone; its pages were in ${s.storeShown}, which ends with the daemon`);
        } else {
          s.state = 'crashed';
          s.note = `QEMU pid ${s.target.pid} ended while the daemon stopped; stored pages kept in ${s.storeShown} until: elasticmem detach ${s.target.spec}`;
          log(s.name, 'QEMU ended while the daemon stopped', s.note);
        }
        continue;
      }
      if (s.storeUri === 'memory:' || !s.store?.capabilities.persistent) {
        log(s.name, 'draining before daemon exit', 'its store does not outlive the daemon');
        // If QEMU dies meanwhile, the pager sees it (pidfd) and the drain ends at once.
        try {
          await drainUnlessStalled(s.pager, STOP_DRAIN_STALL_MS);
          // Drained: detached, whatever becomes of the obsolete copies (a store that
          // refuses their deletion must not leave the VM listed as attached).
          this.sessions.delete(s.vmId);
          this.records.remove(s.target.pid, s.target.startTime);
          await s.store?.dropVm(s.vmId).catch((e: Error) => log(s.name, 'warning', `could not delete stored pages: ${s.scrub(e.message)}`));
          log(s.name, 'detached');
        } catch (e) {
          if ((e as ElasticmemError).code === 'DRAIN_STALLED') {
            // An operator's stop must end; QEMU keeps its userfaultfd and waits.
            s.pager.abandon();
            log(s.name, 'DRAIN GIVEN UP', this.strandedNote(s, e as Error));
          } else {
            log(s.name, 'detach failed', s.scrub((e as Error).message));
          }
        }
      } else {
        s.pager.abandon();
        log(s.name, 'left for the next daemon', `QEMU keeps its userfaultfd; pages stay in ${s.storeShown}`);
      }
    }
    this.saveState();
    // A store that does not answer its close (a network store gone) must not hold the exit.
    await settleWithin([this.stores.closeAll()], STOP_STEP_MS);
    log('-', 'daemon stopped');
    exitWatchdog(EXIT_WATCHDOG_MS);
  }
}

/**
 * A libvirt stop reason (lower case) after which a VM's stored pages are obsolete: the
 * guest ended, or QEMU read every page back through the pager to migrate or save it
 * (managedsave). Anything else (crashed, failed, unknown) keeps them, as a crash.
 */
export function isNormalEnd(reason: string): boolean {
  return ['shutdown', 'destroyed', 'shutdown finished', 'migrated', 'saved'].includes(reason);
}

/** Drain the pager back into its VM; DRAIN_STALLED when no page came back for `stallMs`. */
async function drainUnlessStalled(pager: Pager, stallMs: number): Promise<void> {
  return untilStalled(pager, pager.detach(), stallMs);
}

/** Wait for `drain` (a detach of `pager`); DRAIN_STALLED when no page came back for `stallMs`. */
async function untilStalled(pager: Pager, drain: Promise<unknown>, stallMs: number): Promise<void> {
  let last = Date.now();
  const onProgress = () => { last = Date.now(); };
  pager.on('progress', onProgress);
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      if (Date.now() - last >= stallMs) reject(new ElasticmemError(`the drain brought no page back for ${Math.round(stallMs / 1000)} s (is its store down?); QEMU keeps its userfaultfd and the pages stay in the store`, 'DRAIN_STALLED'));
    }, Math.min(1000, stallMs));
  });
  try {
    await Promise.race([drain, stalled]);
  } finally {
    clearInterval(timer);
    pager.off('progress', onProgress);
    drain.catch(() => { /* given up: abandon ends it */ });
  }
}

/** Wait for the promises to settle, at most `ms`. */
async function settleWithin(ps: Promise<unknown>[], ms: number): Promise<void> {
  if (ps.length === 0) return;
  let t: NodeJS.Timeout | undefined;
  await Promise.race([Promise.allSettled(ps), new Promise<void>((r) => { t = setTimeout(r, ms); })]);
  clearTimeout(t);
}

/**
 * The daemon has stopped: everything it started is closed, so the process should exit
 * now. If something still holds the event loop (a helper process, a socket, a native
 * thread), name it in the log and exit anyway: an operator's SIGTERM must not hang.
 * The timer itself is unref'd and keeps nothing alive.
 */
function exitWatchdog(ms: number): void {
  setTimeout(() => {
    const busy = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'Timeout');
    log('-', 'exit forced', `still busy ${ms} ms after stopping (${busy.join(', ') || 'nothing named'}); exiting`);
    process.exit(process.exitCode ?? 0);
  }, ms).unref();
}

/** A bad key file is refused before anything is touched (BAD_STORE_KEY names the file and the fix). */
/** How the previous daemon opened a VM's store. */
function setupOf(e: StateEntry): StoreSetup {
  return { uri: e.store, ...(e.storeKeyFile ? { keyFile: e.storeKeyFile } : {}), ...(e.compress ? { compress: true } : {}), ...(e.tlsCaFile ? { tlsCaFile: e.tlsCaFile } : {}) };
}

/**
 * holdsLeftUffd for a state entry at start: a QEMU that cannot be looked at (it ended
 * meanwhile) counts as holding one, so that it is listed rather than the start failing.
 */
function holdsLeftUffdOrGone(pid: number): boolean {
  try {
    return holdsLeftUffd(pid);
  } catch {
    return true;
  }
}

/** Does QEMU `pid` still hold the userfaultfd of a monitor that died? (The copy taken to look is closed again.) */
function holdsLeftUffd(pid: number): boolean {
  const native = loadNative();
  const left = native.findTargetUffd(pid);
  if (left) native.closeFd(left.fd);
  return !!left;
}
