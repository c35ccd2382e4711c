/** One attached VM: its target, store, pager and what the daemon knows about it. */
import type { Pager } from '../../native/pager.ts';
import type { PageStore } from '../../kvstore/types.ts';
import type { Target } from '../targets/index.ts';
import type { GuestMemory } from '../targets/ramblocks.ts';
import { toPublic, type PublicStats } from '../stats/stream.ts';
import { PAGE } from '../size.ts';
import { scrub, shownUri } from './secrets.ts';
import type { StoreSetup } from './store-setup.ts';

/**
 * waiting: a VM the previous daemon served, whose take-over has not happened (yet, or it
 * failed): its QEMU waits on its userfaultfd; `attach` retries the take-over with the
 * saved store and key, and the state file keeps it for the next daemon.
 */
export type SessionState = 'attaching' | 'attached' | 'detaching' | 'crashed' | 'orphaned' | 'waiting';

export class Session {
  state: SessionState = 'attaching';
  pager?: Pager;
  store?: PageStore;
  memory?: GuestMemory;
  attachedAt = Date.now();
  /** Serialises operations on this VM (resize during detach, two resizes...). */
  private chain: Promise<unknown> = Promise.resolve();
  /** Last store state the pager reported ('ok' | 'retrying' | 'lost') and why. */
  storeState = 'ok';
  storeError = '';
  lostPages = 0;
  note = '';
  /**
   * Set (synchronously) by whichever path ends the session for good: a detach that
   * drained, or the handling of QEMU's exit. The other path then leaves the store
   * reference and the session alone (releasing twice would close a store other VMs use).
   */
  ended = false;
  /** How it ended, for a client following it (stats --watch): 'detached', 'QEMU ended (shutdown)'... */
  endedHow = '';
  /**
   * ram-watch.ts, for a pid:/qmp: VM: `seen`, the large mappings of QEMU outside the
   * paged RAM as last handled (its RAM is re-discovered when they change); a paging of
   * new RAM that failed (QMP busy) is tried again from `retryAt`, backing off.
   */
  ramWatch = { seen: '', busy: false, retryAt: 0, backoffMs: 0 };
  /** The record of its RAM blocks last written (memory-records.ts). */
  recordText = '';
  /** Taken over from that record, without asking QEMU. */
  memoryRecorded = false;
  /** A waiting VM whose take-over is in progress (one at a time). */
  takingOver = false;

  /** The store URI as shown (CLI, --json, stats, logs): the password masked. */
  readonly storeShown: string;

  constructor(
    readonly target: Pick<Target, 'kind' | 'spec' | 'name' | 'vmId' | 'pid' | 'startTime' | 'aliases'> & Partial<Target>,
    /** How its store is opened: the URI as given (password included, never shown) and options. */
    readonly storeSetup: StoreSetup,
    public capBytes: number,
  ) {
    this.storeShown = shownUri(storeSetup.uri);
  }

  /** The store URI as given, password included: only to (re-)open the store and for the state file. Never shown. */
  get storeUri(): string { return this.storeSetup.uri; }

  /** Text about this VM with its store password masked (store errors may quote the URI). */
  scrub(text: string): string {
    return scrub(text, [this.storeUri]);
  }

  get name(): string { return this.target.name; }
  get vmId(): string { return this.target.vmId; }

  matches(spec: string): boolean {
    return spec === this.target.name || spec === this.target.spec || spec === this.target.vmId || this.target.aliases.includes(spec);
  }

  /** Run fn after every earlier operation on this VM finished. */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => undefined);
    return next;
  }

  summary(): Record<string, unknown> {
    const s = this.pager && this.state !== 'crashed' ? safeStats(this) : undefined;
    return {
      name: this.name,
      vm: this.vmId,
      kind: this.target.kind,
      pid: this.target.pid,
      state: this.state,
      store: this.storeShown,
      // memory: never lets a page out of the daemon: a key has nothing to encrypt there.
      encrypted: !!this.storeSetup.keyFile && this.storeUri !== 'memory:',
      ...(this.storeSetup.keyFile ? { storeKeyFile: this.storeSetup.keyFile } : {}),
      compressed: !!this.storeSetup.compress,
      ...(this.storeSetup.tlsCaFile ? { tlsCaFile: this.storeSetup.tlsCaFile } : {}),
      localBytes: this.capBytes,
      guestRamBytes: this.memory?.guestRamBytes ?? null,
      managedBytes: this.memory?.managedBytes ?? null,
      backing: this.memory?.backing ?? null,
      residentPages: s?.residentPages ?? null,
      remotePages: s?.remotePages ?? null,
      storeState: s?.storeState ?? this.storeState,
      attachedAt: new Date(this.attachedAt).toISOString(),
      ...(this.note ? { note: this.note } : {}),
    };
  }

  stats(): PublicStats {
    if (!this.pager) throw new Error('not attached');
    const st = toPublic(this.pager.stats(), { vm: this.vmId, name: this.name, store: this.storeShown, state: this.state });
    st.storeError = this.scrub(st.storeError);
    return st;
  }
}

function safeStats(s: Session): PublicStats | undefined {
  try { return s.stats(); } catch { return undefined; }
}

export const capPagesOf = (bytes: number) => Math.floor(bytes / PAGE);
