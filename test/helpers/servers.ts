/**
 * Real servers for tests, started by the tests themselves on 127.0.0.1 with ephemeral
 * ports and torn down with the test (t.teardown), failed tests included. Shared by the
 * store conformance suite, the pager and the daemon tests.
 *
 *   const r = await startRedis(t, { appendfsync: 'always' });   // r.uri, r.port, r.restart(), r.pause()
 *   const c = await startRedisCluster(t);                       // c.uri = redis+cluster://...
 *   const m = await startMemcached(t);                          // m.uri = memcached://a,b (two servers)
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';

const execFileP = promisify(execFile);

/** The part of ava's ExecutionContext we need (so non-ava callers can pass their own). */
export interface TeardownContext { teardown(fn: () => unknown): void }

/** A port that is free now (and, with `plus`, port+plus too: the cluster bus). */
export async function freePort(plus?: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.unref();
      s.on('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    if (plus === undefined) return port;
    if (port + plus < 65536 && (await isFree(port + plus))) return port;
  }
  throw new Error('no free port pair found');
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** Resolves once something accepts TCP connections on the port. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await sleep(25);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A child process we own: stop() waits for it to exit. */
class Proc {
  child: ChildProcess | undefined;
  private output = '';
  constructor(private readonly cmd: string, private readonly args: string[], private readonly cwd: string) {}

  start(): void {
    this.output = '';
    const c = spawn(this.cmd, this.args, { cwd: this.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (d) => { this.output = (this.output + d).slice(-4000); });
    c.stderr!.on('data', (d) => { this.output = (this.output + d).slice(-4000); });
    this.child = c;
  }

  get log(): string { return this.output; }
  get alive(): boolean { return !!this.child && this.child.exitCode === null && this.child.signalCode === null; }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.alive) this.child!.kill(signal);
  }

  /**
   * SIGSTOP, returning only once every thread has stopped: the signal is delivered
   * asynchronously, and a worker thread busy on another CPU could otherwise still
   * answer a request sent right after kill() returned.
   */
  freeze(): void {
    if (this.alive) freezeProcess(this.child!.pid!);
  }

  /** Signal the process and wait until it has exited (SIGKILL after 5 s). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const c = this.child;
    if (!c || !this.alive) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    try { process.kill(c.pid!, 'SIGCONT'); } catch { /* gone */ }
    c.kill(signal);
    const t = setTimeout(() => c.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
}

function tmpDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

// ------------------------------------------------------------------------- redis

export interface RedisOptions {
  /** With persistence: fsync policy of the append-only file (default 'always'). */
  appendfsync?: 'always' | 'everysec' | 'no';
  /** Append-only file on (default false: a restart loses every key). */
  persistence?: boolean;
  /** Data directory (default: a fresh temporary directory, removed at teardown). */
  dir?: string;
  /** Extra redis-server arguments, e.g. ['--maxmemory', '10mb']. */
  args?: string[];
  /** Serve TLS only (the port is a tls-port), with these PEM files; clients need not present certificates. */
  tls?: { cert: string; key: string; ca: string };
}

export interface RedisServer {
  port: number;
  uri: string;
  dir: string;
  /** Stop gracefully (SIGTERM: with persistence, the AOF is flushed). */
  stop(): Promise<void>;
  /** Send a signal (default SIGKILL: a crash) and wait for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Start again on the same port and directory (after stop/kill), or stop+start. */
  restart(): Promise<void>;
  /** SIGSTOP / SIGCONT: the server holds connections but answers nothing. */
  pause(): void;
  resume(): void;
  /** Run redis-cli against this server, returns stdout. */
  cli(...args: string[]): Promise<string>;
  readonly log: string;
}

function redisArgs(port: number, dir: string, o: RedisOptions, extra: string[] = []): string[] {
  const persist = o.persistence ?? false;
  const listen = o.tls
    ? ['--port', '0', '--tls-port', String(port), '--tls-cert-file', o.tls.cert, '--tls-key-file', o.tls.key, '--tls-ca-cert-file', o.tls.ca, '--tls-auth-clients', 'no']
    : ['--port', String(port)];
  return [
    ...listen, '--bind', '127.0.0.1', '--dir', dir,
    '--daemonize', 'no', '--save', '', '--protected-mode', 'no', '--loglevel', 'warning',
    '--appendonly', persist ? 'yes' : 'no',
    ...(persist ? ['--appendfsync', o.appendfsync ?? 'always'] : []),
    ...extra, ...(o.args ?? []),
  ];
}

async function waitRedisReady(port: number, proc: Proc, timeoutMs = 15_000, tlsCa?: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (!proc.alive) throw new Error(`redis-server on port ${port} exited: ${proc.log}`);
    try {
      const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...(tlsCa ? ['--tls', '--cacert', tlsCa] : []), 'PING'], { timeout: 2000 });
      if (/^(PONG|NOAUTH)/.test(stdout.trim())) return; // NOAUTH: up, with a password
    } catch { /* not yet */ }
    if (Date.now() > until) throw new Error(`redis-server on port ${port} not ready: ${proc.log}`);
    await sleep(30);
  }
}

export async function startRedis(t: TeardownContext, o: RedisOptions = {}): Promise<RedisServer> {
  const port = await freePort();
  const ownDir = o.dir === undefined;
  const dir = o.dir ?? tmpDir('em-redis-');
  const proc = new Proc('redis-server', redisArgs(port, dir, o), dir);
  t.teardown(async () => {
    await proc.stop('SIGKILL');
    if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
  });
  proc.start();
  const ca = o.tls?.ca;
  await waitRedisReady(port, proc, undefined, ca);
  const server: RedisServer = {
    port,
    uri: `${o.tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    dir,
    stop: () => proc.stop('SIGTERM'),
    kill: (signal = 'SIGKILL') => proc.stop(signal),
    restart: async () => {
      await proc.stop('SIGTERM');
      proc.start();
      await waitRedisReady(port, proc, undefined, ca);
    },
    pause: () => proc.freeze(),
    resume: () => proc.kill('SIGCONT'),
    cli: async (...args) => (await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...(ca ? ['--tls', '--cacert', ca] : []), ...args])).stdout,
    get log() { return proc.log; },
  };
  return server;
}

// ----------------------------------------------------------------- redis cluster

export interface RedisClusterServer {
  ports: number[];
  uri: string;
  /** Stop every node (SIGTERM) and start them again with their cluster config. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  pause(): void;
  resume(): void;
}

async function waitClusterOk(ports: number[], timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    let ok = true;
    for (const p of ports) {
      try {
        const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(p), 'CLUSTER', 'INFO'], { timeout: 2000 });
        if (!stdout.includes('cluster_state:ok')) ok = false;
      } catch { ok = false; }
    }
    if (ok) return;
    if (Date.now() > until) throw new Error(`redis cluster on ${ports.join(',')} did not reach cluster_state:ok`);
    await sleep(100);
  }
}

export async function startRedisCluster(t: TeardownContext, o: RedisOptions = {}): Promise<RedisClusterServer> {
  const ports: number[] = [];
  const procs: Proc[] = [];
  const dirs: string[] = [];
  t.teardown(async () => {
    await Promise.all(procs.map((p) => p.stop('SIGKILL')));
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  for (let i = 0; i < 3; i++) {
    let port = await freePort(10000);
    while (ports.includes(port)) port = await freePort(10000);
    const dir = tmpDir(`em-rcluster-${i}-`);
    ports.push(port);
    dirs.push(dir);
    const p = new Proc('redis-server', redisArgs(port, dir, o, ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000']), dir);
    procs.push(p);
    p.start();
  }
  for (let i = 0; i < 3; i++) await waitRedisReady(ports[i]!, procs[i]!);
  await execFileP('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { timeout: 30_000 });
  await waitClusterOk(ports);
  return {
    ports,
    uri: `redis+cluster://${ports.map((p) => `127.0.0.1:${p}`).join(',')}`,
    restart: async () => {
      await Promise.all(procs.map((p) => p.stop('SIGTERM')));
      for (const p of procs) p.start();
      for (let i = 0; i < 3; i++) await waitRedisReady(ports[i]!, procs[i]!);
      await waitClusterOk(ports);
    },
    stop: async () => { await Promise.all(procs.map((p) => p.stop('SIGTERM'))); },
    pause: () => { for (const p of procs) p.freeze(); },
    resume: () => { for (const p of procs) p.kill('SIGCONT'); },
  };
}

// --------------------------------------------------------------------- memcached

export interface MemcachedServers {
  ports: number[];
  /** memcached://127.0.0.1:a,127.0.0.1:b */
  uri: string;
  /** Restart every instance (memcached keeps nothing across a restart). */
  restart(): Promise<void>;
  stop(): Promise<void>;
  /** Kill one instance (SIGKILL), leaving the others up. */
  killOne(index: number): Promise<void>;
  pause(): void;
  resume(): void;
}

export interface MemcachedOptions {
  /** Instances (default 2). */
  count?: number;
  /** Memory per instance in MiB (default 1024). */
  memoryMb?: number;
}

export async function startMemcached(t: TeardownContext, o: MemcachedOptions = {}): Promise<MemcachedServers> {
  const n = o.count ?? 2;
  const ports: number[] = [];
  const procs: Proc[] = [];
  t.teardown(async () => { await Promise.all(procs.map((p) => p.stop('SIGKILL'))); });
  for (let i = 0; i < n; i++) {
    let port = await freePort();
    while (ports.includes(port)) port = await freePort();
    ports.push(port);
    // -M: answer "out of memory" instead of evicting (a page store must never drop pages).
    const args = ['-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', String(o.memoryMb ?? 1024), '-M', '-t', '2'];
    if (process.getuid?.() === 0) args.push('-u', 'root');
    const p = new Proc('memcached', args, os.tmpdir());
    procs.push(p);
    p.start();
  }
  await Promise.all(ports.map((p) => waitForPort(p)));
  return {
    ports,
    uri: `memcached://${ports.map((p) => `127.0.0.1:${p}`).join(',')}`,
    restart: async () => {
      await Promise.all(procs.map((p) => p.stop('SIGTERM')));
      for (const p of procs) p.start();
      await Promise.all(ports.map((p) => waitForPort(p)));
    },
    stop: async () => { await Promise.all(procs.map((p) => p.stop('SIGTERM'))); },
    killOne: (i) => procs[i]!.stop('SIGKILL'),
    pause: () => { for (const p of procs) p.freeze(); },
    resume: () => { for (const p of procs) p.kill('SIGCONT'); },
  };
}

// --------------------------------------------------------------------------- TLS

export interface TlsFiles { dir: string; ca: string; cert: string; key: string }

/** A throwaway CA and a server certificate for 127.0.0.1 and localhost (openssl), removed at teardown. */
export async function makeTlsCerts(t: TeardownContext): Promise<TlsFiles> {
  const dir = tmpDir('em-tls-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const f = (n: string) => path.join(dir, n);
  const ossl = (...a: string[]) => execFileP('openssl', a, { cwd: dir, timeout: 30_000 });
  await ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=elasticmem test CA', '-keyout', f('ca.key'), '-out', f('ca.pem'));
  await ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', f('server.key'), '-out', f('server.csr'));
  fs.writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await ossl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', f('ext.cnf'), '-out', f('server.pem'));
  return { dir, ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key') };
}

/**
 * SIGSTOP a process, returning once every thread of it has stopped (or after 2 s, or
 * when it is gone): the signal is delivered asynchronously, and a thread busy on
 * another CPU could otherwise still answer a request sent right after kill() returned.
 */
export function freezeProcess(pid: number): void {
  process.kill(pid, 'SIGSTOP');
  const until = Date.now() + 2000;
  const tick = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    let all = true;
    try {
      for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
        const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        if (stat[stat.lastIndexOf(')') + 2] !== 'T') all = false;
      }
    } catch {
      return; // gone: nothing left to answer
    }
    if (all || Date.now() > until) return;
    Atomics.wait(tick, 0, 0, 1); // 1 ms
  }
}
