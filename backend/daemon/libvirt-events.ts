/**
 * Events of libvirt domains, from one long-running `virsh event --loop --event TYPE`
 * (every domain: no --domain), one watcher per type. Lifecycle: we need the reason
 * a domain stopped: a normal shutdown (or destroy) means its stored pages can go; a crash
 * means they are kept for the operator. Polling `domstate --reason` cannot tell for
 * transient domains, which vanish when they stop. The watcher restarts virsh if it exits
 * (libvirtd restart), and says why once when it keeps failing.
 *
 * Device-added: memory hot-added behind the daemon's back (virsh attach-device of a
 * DIMM) is put under the VM's pager.
 *
 * (`--all` means "every event type" to virsh and cannot be combined with --event: with
 * it, virsh exited at once and no event ever arrived.)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { LIBVIRT_URI } from '../targets/virsh.ts';

/** event: the lifecycle event (Stopped, ...) or the added device's alias; detail: the reason, if any. */
export interface LifecycleEvent { domain: string; event: string; detail: string; at: number }

export type EventType = 'lifecycle' | 'device-added';

export const eventArgs = (type: EventType) => ['-c', LIBVIRT_URI, 'event', '--loop', '--event', type];

/**
 * virsh started through util-linux's `setpriv --pdeathsig KILL` (which then execs it):
 * the kernel kills it when the daemon dies, however it dies. A daemon killed with
 * SIGKILL cannot stop its watchers, and a watcher that no event comes to (device-added
 * is rare) would otherwise live on, one more after every crash. Without setpriv, virsh
 * is started directly (the orphan then ends at its next event: writing to the closed
 * pipe kills it).
 */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => fs.existsSync(p));
export const watcherCommand = (type: EventType): [string, string[]] =>
  SETPRIV ? [SETPRIV, ['--pdeathsig', 'KILL', '--', 'virsh', ...eventArgs(type)]] : ['virsh', eventArgs(type)];

export class LibvirtEvents extends EventEmitter {
  /** Emits `type` with a LifecycleEvent per event, 'warning' when virsh keeps failing. */
  constructor(readonly type: EventType = 'lifecycle') {
    super();
  }
  private child?: ChildProcess;
  private exited?: Promise<void>;
  private stopped = false;
  private timer?: NodeJS.Timeout;
  /** Restart delay: grows while virsh keeps failing (libvirtd down), resets once events flow. */
  private backoffMs = 1000;
  private warned = false;
  /** Last lifecycle event per domain name. */
  readonly last = new Map<string, LifecycleEvent>();

  start(): void {
    if (this.stopped || this.child) return;
    const [cmd, args] = watcherCommand(this.type);
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const lineRe = new RegExp(`event '${this.type}' for domain '(.+)': (\\S+) ?(.*)$`);
    this.child = child;
    this.exited = new Promise((resolve) => child.once('close', () => resolve()));
    let buf = '';
    let err = '';
    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => { if (err.length < 2000) err += chunk; });
    child.stdout!.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        // event 'lifecycle' for domain 'NAME': Stopped Shutdown
        // event 'device-added' for domain 'NAME': dimm0
        const m = lineRe.exec(line);
        if (!m) continue;
        this.backoffMs = 1000;
        const ev = { domain: m[1]!, event: m[2]!, detail: m[3]!.trim(), at: Date.now() };
        this.last.set(ev.domain, ev);
        this.emit(this.type, ev);
      }
    });
    child.on('error', (e) => { err += e.message; /* virsh missing: the exit handler retries */ });
    child.on('close', (code) => {
      this.child = undefined;
      if (this.stopped) return;
      if (!this.warned && err.trim()) {
        this.warned = true;
        this.emit('warning', `virsh event exited (${code ?? 'signal'}): ${err.trim().split('\n')[0]}; retrying with backoff`);
      }
      this.timer = setTimeout(() => this.start(), this.backoffMs);
      this.timer.unref();
      this.backoffMs = Math.min(this.backoffMs * 2, 30_000);
    });
  }

  /** Stop watching; resolves once virsh has exited (SIGKILL if SIGTERM did not do it within 1 s). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    const child = this.child;
    if (!child) return;
    child.kill('SIGTERM');
    const kill = setTimeout(() => child.kill('SIGKILL'), 1000);
    await this.exited;
    clearTimeout(kill);
  }
}
