/**
 * The CLI side of the control protocol: one connection per command, one request,
 * zero or more stream messages, one final response.
 */
import fs from 'node:fs';
import net from 'node:net';
import { ElasticmemError } from '../../native/errors.ts';
import { PROTOCOL_VERSION, type Op, type Response } from '../protocol.ts';
import { DEFAULT_SOCKET } from '../daemon/server.ts';

export { DEFAULT_SOCKET };

export interface CallOptions {
  socket?: string;
  onStream?: (data: unknown) => void;
  /** Abort (e.g. Ctrl-C on --watch): closes the connection, the daemon stops the stream. */
  signal?: AbortSignal;
}

/** An error the daemon answered (as opposed to one the CLI raised before asking). */
export class DaemonError extends ElasticmemError {}

function kindOf(p: string): string | null {
  try {
    const st = fs.statSync(p);
    return st.isSocket() ? null : st.isDirectory() ? 'a directory' : st.isFile() ? 'a regular file' : 'not a socket';
  } catch {
    return null;
  }
}

function connectError(e: NodeJS.ErrnoException, socket: string): ElasticmemError {
  const start = `elasticmem daemon${socket !== DEFAULT_SOCKET ? ` --socket ${socket}` : ''}`;
  const notSocket = kindOf(socket);
  if (notSocket) return new ElasticmemError(`${socket} is ${notSocket}, not the daemon's control socket; give the socket the daemon listens on with --socket (default ${DEFAULT_SOCKET})`, 'BAD_SOCKET');
  switch (e.code) {
    case 'ENOENT':
      return new ElasticmemError(`no elasticmem daemon at ${socket}; start one with: ${start}`, 'DAEMON_NOT_RUNNING');
    case 'ECONNREFUSED':
      return new ElasticmemError(`the daemon socket ${socket} exists but nobody listens (a daemon died); start one with: ${start}`, 'DAEMON_NOT_RUNNING');
    case 'EACCES':
    case 'EPERM':
      return new ElasticmemError(`permission denied on ${socket}: the elasticmem control socket is root-only; run this command as root`, 'NOT_ROOT');
    default:
      return new ElasticmemError(`cannot connect to ${socket}: ${e.message}`, 'DAEMON_UNREACHABLE', 0, 'connect');
  }
}

let nextId = 1;

export function call(op: Op, args: Record<string, unknown>, opts: CallOptions = {}): Promise<unknown> {
  const socket = opts.socket ?? DEFAULT_SOCKET;
  const id = `${process.pid}-${nextId++}`;
  return new Promise((resolve, reject) => {
    const sock = net.connect(socket);
    let settled = false;
    let buf = '';
    const finish = (err: Error | null, value?: unknown) => {
      if (settled) return;
      settled = true;
      sock.destroy();
      if (err) reject(err); else resolve(value);
    };
    opts.signal?.addEventListener('abort', () => finish(null, undefined), { once: true });
    sock.setEncoding('utf8');
    sock.once('connect', () => sock.write(JSON.stringify({ v: PROTOCOL_VERSION, id, op, args }) + '\n'));
    sock.on('error', (e: NodeJS.ErrnoException) => finish(connectError(e, socket)));
    sock.on('close', () => finish(new ElasticmemError(`the daemon closed the connection before answering '${op}'`, 'DAEMON_HUNG_UP')));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let msg: Response;
        try { msg = JSON.parse(line) as Response; } catch { return finish(new ElasticmemError(`the daemon sent something that is not JSON: ${line.slice(0, 80)}`, 'PROTOCOL')); }
        if (msg.id !== id && msg.id !== '') continue;
        if (!msg.ok) return finish(new DaemonError(msg.error.message, msg.error.code));
        if ('stream' in msg) { opts.onStream?.(msg.stream); continue; }
        return finish(null, msg.result);
      }
    });
  });
}
