/**
 * A small QMP client over a Unix socket: greeting, `qmp_capabilities`, then `execute`
 * with ids, and events delivered to listeners. QEMU serves one QMP client per socket at a
 * time, so callers connect, do their work and close; nothing holds the socket open.
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { ElasticmemError } from '../../native/errors.ts';

export interface QmpEvent { event: string; data?: unknown; timestamp?: unknown }

export class QmpClient extends EventEmitter {
  private sock?: net.Socket;
  private buf = '';
  private nextId = 1;
  private pending = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void; cmd: string }>();
  private greeting?: (v: unknown) => void;
  version?: { qemu: { major: number; minor: number; micro: number } };

  constructor(readonly path: string, readonly timeoutMs = 10_000) { super(); }

  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const c = new QmpClient(path, timeoutMs);
    try {
      await c.open();
    } catch (e) {
      // A connection left open here would take QEMU's one QMP slot once the client that
      // holds it now leaves, and keep it forever.
      c.close();
      throw e;
    }
    return c;
  }

  private async open(): Promise<void> {
    const sock = net.connect(this.path);
    this.sock = sock;
    sock.setEncoding('utf8');
    const greeted = new Promise<unknown>((resolve, reject) => {
      this.greeting = resolve;
      const t = setTimeout(() => reject(new ElasticmemError(`QMP socket ${this.path} sent no greeting within ${this.timeoutMs} ms (is another client connected to it?)`, 'QMP_TIMEOUT')), this.timeoutMs);
      sock.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(t);
        reject(new ElasticmemError(`cannot connect to QMP socket ${this.path}: ${e.code ?? e.message}`, e.code === 'ENOENT' ? 'VM_NOT_FOUND' : 'QMP_UNREACHABLE', 0, 'connect'));
      });
      sock.once('data', () => clearTimeout(t));
    });
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('close', () => this.failAll(new ElasticmemError(`QMP connection ${this.path} closed`, 'QMP_CLOSED')));
    sock.on('error', () => { /* reported through close */ });
    const g = (await greeted) as { QMP?: { version?: QmpClient['version'] } };
    this.version = g.QMP?.version;
    await this.execute('qmp_capabilities');
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try { msg = JSON.parse(line); } catch { continue; }
      if ('QMP' in msg) { this.greeting?.(msg); this.greeting = undefined; continue; }
      if ('event' in msg) { this.emit('event', msg as unknown as QmpEvent); continue; }
      const id = String(msg.id ?? '');
      const p = this.pending.get(id);
      if (!p) continue;
      this.pending.delete(id);
      if ('error' in msg) {
        const err = msg.error as { class?: string; desc?: string };
        p.reject(new ElasticmemError(`QMP ${p.cmd}: ${err.desc ?? 'error'} (${err.class ?? 'GenericError'})`, 'QMP_ERROR'));
      } else {
        p.resolve(msg.return);
      }
    }
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  execute<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T> {
    const sock = this.sock;
    if (!sock || sock.destroyed) return Promise.reject(new ElasticmemError(`QMP connection ${this.path} is closed`, 'QMP_CLOSED'));
    const id = `em-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new ElasticmemError(`QMP ${cmd} got no answer within ${this.timeoutMs} ms`, 'QMP_TIMEOUT'));
      }, this.timeoutMs);
      this.pending.set(id, {
        cmd,
        resolve: (v) => { clearTimeout(t); resolve(v as T); },
        reject: (e) => { clearTimeout(t); reject(e); },
      });
      sock.write(JSON.stringify(args ? { execute: cmd, arguments: args, id } : { execute: cmd, id }) + '\n');
    });
  }

  close(): void {
    this.sock?.destroy();
  }
}
