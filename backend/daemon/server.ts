/**
 * The control socket: accepts connections from root only (socket file mode 0600 in a
 * 0700 directory, and the peer's credentials checked on every connection), reads
 * newline-delimited JSON requests, and answers each through the handler. A request is
 * validated completely before the handler sees it, so a malformed one changes nothing.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ElasticmemError } from '../../native/errors.ts';
import { MAX_LINE, PROTOCOL_VERSION, errorBody, parseRequest, salvageId, type Request, type Response } from '../protocol.ts';
import { peerCred, checkPeerCred } from './peercred.ts';
import { log } from './log.ts';

export const DEFAULT_SOCKET = '/run/elasticmem/elasticmem.sock';

export interface RequestContext {
  /** Send a stream message for this request (progress, watch samples). */
  stream(data: unknown): void;
  /** Aborted when the client disconnects: long-running streams stop. */
  signal: AbortSignal;
}

export type Handler = (req: Request, ctx: RequestContext) => Promise<unknown>;

export class ControlServer {
  private server?: net.Server;
  private conns = new Set<net.Socket>();

  constructor(readonly socketPath: string, private handler: Handler) {}

  async listen(): Promise<void> {
    checkPeerCred();
    const dir = path.dirname(this.socketPath);
    if (!fs.existsSync(dir)) {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    }
    // Our own default directory is always made private; a directory the operator chose is
    // left alone (it may be shared, like /tmp), the socket's own mode protects it.
    if (path.resolve(this.socketPath) === DEFAULT_SOCKET) fs.chmodSync(dir, 0o700);
    await this.removeStale();
    const server = net.createServer((sock) => void this.accept(sock));
    // Create the socket file with mode 0600 from the start: no window where it is open to all.
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(this.socketPath, () => { server.off('error', reject); resolve(); });
      });
      // Once listening, an error is a failed accept (EMFILE, ENFILE): unhandled, it would
      // end the daemon, and with it the pages of every VM on memory:. Log it and go on.
      server.on('error', (e) => log('-', 'warning', `control socket: ${e.message}`));
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(this.socketPath, 0o600);
    this.server = server;
  }

  /** A socket file left by a daemon that died is removed; a live daemon is an error. */
  private async removeStale(): Promise<void> {
    let st: fs.Stats;
    try { st = fs.lstatSync(this.socketPath); } catch { return; }
    if (!st.isSocket()) {
      throw new ElasticmemError(`${this.socketPath} exists and is not a socket; remove it or choose another --socket`, 'SOCKET_IN_USE');
    }
    const alive = await new Promise<boolean>((resolve) => {
      const c = net.connect(this.socketPath);
      c.once('connect', () => { c.destroy(); resolve(true); });
      c.once('error', () => resolve(false));
    });
    if (alive) throw new ElasticmemError(`another elasticmem daemon is already listening on ${this.socketPath}`, 'DAEMON_RUNNING');
    fs.unlinkSync(this.socketPath);
  }

  private async accept(sock: net.Socket): Promise<void> {
    this.conns.add(sock);
    sock.on('close', () => this.conns.delete(sock));
    sock.on('error', () => { /* client went away */ });
    sock.pause();
    try {
      const cred = await peerCred(sock);
      if (cred.uid !== 0) {
        log('-', 'refused connection', `client pid ${cred.pid} uid ${cred.uid} is not root`);
        this.send(sock, { v: PROTOCOL_VERSION, id: '', ok: false, error: { code: 'NOT_ROOT', message: `the elasticmem control socket is root-only; client uid ${cred.uid} was refused (run the command as root)` } });
        sock.end();
        return;
      }
    } catch (e) {
      log('-', 'refused connection', `credentials could not be verified: ${(e as Error).message}`);
      this.send(sock, { v: PROTOCOL_VERSION, id: '', ok: false, error: { code: 'NOT_ROOT', message: `the client's credentials could not be verified, so it was refused: ${(e as Error).message}` } });
      sock.end();
      return;
    }
    const abort = new AbortController();
    sock.on('close', () => abort.abort());
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) void this.dispatch(sock, line, abort.signal);
      }
      if (buf.length > MAX_LINE) {
        this.send(sock, { v: PROTOCOL_VERSION, id: '', ok: false, error: { code: 'BAD_REQUEST', message: `request line longer than ${MAX_LINE} bytes; connection closed` } });
        buf = '';
        sock.end();
      }
    });
    sock.resume();
  }

  private async dispatch(sock: net.Socket, line: string, signal: AbortSignal): Promise<void> {
    let req: Request;
    try {
      req = parseRequest(line);
    } catch (e) {
      this.send(sock, { v: PROTOCOL_VERSION, id: salvageId(line), ok: false, error: errorBody(e) });
      return;
    }
    const ctx: RequestContext = {
      stream: (data) => this.send(sock, { v: PROTOCOL_VERSION, id: req.id, ok: true, stream: data }),
      signal,
    };
    try {
      const result = await this.handler(req, ctx);
      this.send(sock, { v: PROTOCOL_VERSION, id: req.id, ok: true, result: result ?? null });
    } catch (e) {
      this.send(sock, { v: PROTOCOL_VERSION, id: req.id, ok: false, error: errorBody(e) });
    }
  }

  private send(sock: net.Socket, msg: Response): void {
    if (!sock.destroyed && sock.writable) sock.write(JSON.stringify(msg) + '\n');
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    try { fs.unlinkSync(this.socketPath); } catch { /* already gone */ }
  }
}
