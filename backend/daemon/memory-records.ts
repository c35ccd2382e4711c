/**
 * Per-QEMU records of the RAM blocks the daemon pages (FOLDER/PID-START.json, beside the
 * state file), so that a take-over never has to ask QEMU: with no monitor serving its
 * userfaultfd, QEMU's main thread (which answers QMP) may be waiting on a page, and the
 * monitor then answers nobody until a take-over has happened. The state file says which
 * VMs to take over; these say where their RAM is, and outlive a lost state file.
 *
 * Named by pid and process start time, so a reused pid never reads another QEMU's record;
 * records of processes that ended are swept. Written atomically, mode 0600.
 */
import fs from 'node:fs';
import path from 'node:path';
import { processEnded } from '../../native/proc-start.ts';
import type { GuestMemoryRecord } from '../targets/ramblocks.ts';
import { writePrivateFile } from './state.ts';

export class MemoryRecords {
  constructor(readonly dir: string) {}

  private file(pid: number, startTime: number): string {
    return path.join(this.dir, `${pid}-${startTime}.json`);
  }

  /** `store`: the URI its pages go to, as given (the file is root's, mode 0600, like the state file). */
  write(pid: number, startTime: number, vmId: string, rec: GuestMemoryRecord, store: string): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    writePrivateFile(this.file(pid, startTime), JSON.stringify({ v: 1, vmId, store, ...rec }) + '\n');
  }

  /** The store this QEMU's pages went to for this VM, or null (no record, or one written before stores were recorded). */
  storeOf(pid: number, startTime: number, vmId: string): string | null {
    const doc = this.load(pid, startTime) as { vmId: string; store?: unknown } | null;
    return doc && doc.vmId === vmId && typeof doc.store === 'string' ? doc.store : null;
  }

  /** The record of this QEMU for this VM, or null (none, unreadable, another VM's). */
  read(pid: number, startTime: number, vmId: string): GuestMemoryRecord | null {
    const doc = this.load(pid, startTime);
    if (!doc || doc.vmId !== vmId || !Array.isArray(doc.regions)) return null;
    return { regions: doc.regions, guestRamBytes: doc.guestRamBytes, memoryDevices: doc.memoryDevices ?? [] };
  }

  /** The VM id this QEMU's record was written for, or null. */
  vmIdOf(pid: number, startTime: number): string | null {
    return this.load(pid, startTime)?.vmId ?? null;
  }

  /**
   * Whether records here can be believed: the folder is this user's own (root's), not a
   * link, and nobody else may write in it. Beside a state file in a shared folder
   * (`--state /tmp/x.json`) another user could create it first and plant records that
   * send a take-over to the wrong VM's pages.
   */
  private trusted(): boolean {
    try {
      const st = fs.lstatSync(this.dir);
      return st.isDirectory() && st.uid === (process.getuid?.() ?? st.uid) && (st.mode & 0o022) === 0;
    } catch {
      return false;
    }
  }

  /** This QEMU's record as written (format 1), or null (also when the folder is not trusted). */
  private load(pid: number, startTime: number): (GuestMemoryRecord & { vmId: string }) | null {
    if (!this.trusted()) return null;
    try {
      const doc = JSON.parse(fs.readFileSync(this.file(pid, startTime), 'utf8')) as GuestMemoryRecord & { v?: number; vmId?: unknown };
      return doc.v === 1 && typeof doc.vmId === 'string' ? (doc as GuestMemoryRecord & { vmId: string }) : null;
    } catch {
      return null;
    }
  }

  remove(pid: number, startTime: number): void {
    fs.rmSync(this.file(pid, startTime), { force: true });
  }

  /** Remove the records of processes that have ended. */
  sweep(): void {
    let names: string[];
    try { names = fs.readdirSync(this.dir); } catch { return; }
    for (const f of names) {
      const m = /^(\d+)-(\d+)\.json(\.\d+\.tmp)?$/.exec(f);
      if (m && processEnded(Number(m[1]), Number(m[2]))) fs.rmSync(path.join(this.dir, f), { force: true });
    }
  }
}
