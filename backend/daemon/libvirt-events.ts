/**
 * Lifecycle events of libvirt domains, from one long-running
 * `virsh event --all --loop --event lifecycle`. We need the reason a domain stopped:
 * a normal shutdown (or destroy) means its stored pages can go; a crash means they are
 * kept for the operator. Polling `domstate --reason` cannot tell for transient domains,
 * which vanish when they stop. The watcher restarts virsh if it exits (libvirtd restart).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { LIBVIRT_URI } from '../targets/virsh.ts';

export interface LifecycleEvent { domain: string; event: string; detail: string; at: number }

export class LibvirtEvents extends EventEmitter {
  private child?: ChildProcess;
  private stopped = false;
  /** Restart delay: grows while virsh keeps failing (libvirtd down), resets once events flow. */
  private backoffMs = 1000;
  /** Last lifecycle event per domain name. */
  readonly last = new Map<string, LifecycleEvent>();

  start(): void {
    if (this.stopped || this.child) return;
    const child = spawn('virsh', ['-c', LIBVIRT_URI, 'event', '--all', '--loop', '--event', 'lifecycle'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.child = child;
    let buf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        // event 'lifecycle' for domain 'NAME': Stopped Shutdown
        const m = /event 'lifecycle' for domain '(.+)': (\S+) ?(.*)$/.exec(line);
        if (!m) continue;
        this.backoffMs = 1000;
        const ev = { domain: m[1]!, event: m[2]!, detail: m[3]!.trim(), at: Date.now() };
        this.last.set(ev.domain, ev);
        this.emit('lifecycle', ev);
      }
    });
    child.on('error', () => { /* virsh missing: exit handler retries */ });
    child.on('exit', () => {
      this.child = undefined;
      if (this.stopped) return;
      setTimeout(() => this.start(), this.backoffMs).unref();
      this.backoffMs = Math.min(this.backoffMs * 2, 30_000);
    });
  }

  stop(): void {
    this.stopped = true;
    this.child?.kill('SIGTERM');
  }
}
