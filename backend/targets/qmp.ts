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
  /** While the greeting is awaited. */
  private greeting?: { resolve: (v: unknown) => void; reject: (e: Error) => void };
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
    // Settled by the greeting itself, a first line that is not one, an error, the
    // connection closing, or the time-out: never left waiting.
    const greeted = new Promise<unknown>((resolve, reject) => {
      const t = setTimeout(() => fail(new ElasticmemError(`QMP socket ${this.path} sent no greeting within ${this.timeoutMs} ms (is another client connected to it?)`, 'QMP_TIMEOUT')), this.timeoutMs);
      const fail = (e: Error) => { clearTimeout(t); this.greeting = undefined; reject(e); };
      this.greeting = { resolve: (v) => { clearTimeout(t); this.greeting = undefined; resolve(v); }, reject: fail };
      sock.once('error', (e: NodeJS.ErrnoException) => {
        this.greeting?.reject(new ElasticmemError(`cannot connect to QMP socket ${this.path}: ${e.code ?? e.message}`, e.code === 'ENOENT' ? 'VM_NOT_FOUND' : 'QMP_UNREACHABLE', 0, 'connect'));
      });
    });
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('close', () => {
      this.greeting?.reject(new ElasticmemError(`QMP socket ${this.path} closed the connection before its greeting`, 'QMP_UNREACHABLE'));
      this.failAll(new ElasticmemError(`QMP connection ${this.path} closed`, 'QMP_CLOSED'));
    });
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
      let msg: Record<string, unknown> | null = null;
      try { msg = JSON.parse(line); } catch { /* not JSON */ }
      if (this.greeting) {
        if (msg && typeof msg === 'object' && 'QMP' in msg) this.greeting.resolve(msg);
        else this.greeting.reject(notQmp(this.path, line));
        continue;
      }
      if (!msg || typeof msg !== 'object') continue;
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

/** The first line a socket sent was not a QMP greeting (an HMP `-monitor` socket, say). */
export function notQmp(path: string, firstLine: string): ElasticmemError {
  const shown = firstLine.length > 60 ? `${firstLine.slice(0, 60)}...` : firstLine;
  if (firstLine.trim() === '{') {
    return new ElasticmemError(`${path} is a QMP socket with pretty=on (one JSON object over many lines), which elasticmem does not read; use a QMP socket without pretty=on`, 'NOT_QMP');
  }
  const hmp = /^QEMU .*monitor/.test(firstLine) ? " (QEMU's human monitor, -monitor)" : '';
  return new ElasticmemError(`${path} is not a QMP socket${hmp}: it greeted with ${JSON.stringify(shown)}; give the socket of QEMU's -qmp (or -chardev ...,id=X -mon X,mode=control) option`, 'NOT_QMP');
}
