/**
 * Black-box access to the real `elasticmem` binary for the CLI, daemon and VM tests:
 * spawn bin/elasticmem.js as a daemon on a private socket/state file (never the
 * system's /run/elasticmem) and run CLI commands against it. Every daemon is killed at
 * t.teardown (failed tests included) and its folder removed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { REPO_ROOT } from './guest.ts';
import type { TeardownContext } from './servers.ts';

export const BIN = path.join(REPO_ROOT, 'bin', 'elasticmem.js');

export interface CliResult { code: number; stdout: string; stderr: string }

/**
 * Run `elasticmem ARGS` to completion. `as: 'nobody'` drops to uid 65534 with setpriv;
 * `bin` runs another copy of bin/elasticmem.js (in its own folder).
 */
export function runCli(args: string[], opts: { as?: 'nobody'; extraCaps?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; bin?: string } = {}): Promise<CliResult> {
  const bin = opts.bin ?? BIN;
  let cmd = process.execPath;
  let argv = [bin, ...args];
  if (opts.as === 'nobody') {
    const caps = opts.extraCaps ? [`--inh-caps=+${opts.extraCaps}`, `--ambient-caps=+${opts.extraCaps}`] : [];
    argv = ['--reuid=65534', '--regid=65534', '--clear-groups', ...caps, process.execPath, bin, ...args];
    cmd = 'setpriv';
  }
  const cwd = opts.bin ? path.dirname(path.dirname(bin)) : REPO_ROOT;
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      resolve({ code: code ?? (sig ? 128 : -1), stdout, stderr });
    });
  });
}

export interface DaemonHandle {
  dir: string;
  socket: string;
  state: string;
  proc: ChildProcess;
  /** Everything the daemon logged so far. */
  log(): string;
  /** `elasticmem ARGS --socket <ours>`. */
  cli(...args: string[]): Promise<CliResult>;
  /** Wait until the log matches. */
  waitLog(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  kill9(): Promise<void>;
  stop(): Promise<number | null>;
  /** Start a new daemon process on the same socket, state and config (and environment, unless given). */
  restart(env?: Record<string, string>): Promise<DaemonHandle>;
}

function waitSocket(sock: string, proc: ChildProcess, logs: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (proc.exitCode !== null || proc.signalCode !== null) return reject(new Error(`daemon exited (${proc.exitCode ?? proc.signalCode}) before listening:\n${logs()}`));
      const c = net.connect(sock);
      c.once('connect', () => { c.destroy(); resolve(); });
      c.once('error', () => {
        if (Date.now() > deadline) reject(new Error(`daemon did not listen on ${sock} within ${timeoutMs} ms:\n${logs()}`));
        else setTimeout(tick, 100);
      });
    };
    tick();
  });
}

/** Start `elasticmem daemon` with its own socket and state file (and config text, if given). */
export async function startDaemon(t: TeardownContext, o: { config?: string; dir?: string; extraArgs?: string[]; removeDir?: boolean; env?: Record<string, string> } = {}): Promise<DaemonHandle> {
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), `emd-${process.pid}-`));
  // The socket lives in a subfolder the daemon creates itself (mode 0700).
  const socket = path.join(dir, 'run', 'em.sock');
  const state = path.join(dir, 'state.json');
  const args = ['daemon', '--socket', socket, '--state', state, ...(o.extraArgs ?? [])];
  if (o.config !== undefined) {
    const cfg = path.join(dir, 'config.yaml');
    fs.writeFileSync(cfg, o.config);
    args.push('--config', cfg);
  }
  const proc = spawn(process.execPath, [BIN, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } });
  let logs = '';
  proc.stdout!.on('data', (d: Buffer) => { logs += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { logs += d.toString(); });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  let owned = true;
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(t);
    }
    if (owned && (!o.dir || o.removeDir)) fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitSocket(socket, proc, () => logs, 60_000);
  const h: DaemonHandle = {
    dir, socket, state, proc,
    log: () => logs,
    cli: (...a) => runCli([...a, '--socket', socket]),
    async waitLog(re, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = re.exec(logs);
        if (m) return m;
        if (Date.now() > deadline) throw new Error(`daemon log: no match for ${re} within ${timeoutMs} ms:\n${logs}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async kill9() {
      proc.kill('SIGKILL');
      await exited;
    },
    async stop() {
      proc.kill('SIGTERM');
      return exited;
    },
    async restart(env = o.env) {
      owned = false;
      const next = await startDaemon(t, { config: o.config, dir, extraArgs: o.extraArgs, removeDir: true, env });
      return next;
    },
  };
  return h;
}

/** Does process `pid` hold a userfaultfd? (Is anything of elasticmem left in it?) */
export function holdsUffd(pid: number): boolean {
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === 'anon_inode:[userfaultfd]') return true;
    } catch { /* closed meanwhile */ }
  }
  return false;
}

/** Send raw lines to a daemon's socket, collect the JSON answers until `count` arrived or the socket closed. */
export function rawExchange(socket: string, payload: string, count: number, timeoutMs = 10_000): Promise<Record<string, any>[]> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    const out: Record<string, any>[] = [];
    let buf = '';
    const done = () => { s.destroy(); resolve(out); };
    const timer = setTimeout(done, timeoutMs);
    s.on('error', reject);
    s.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        out.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
      if (out.length >= count) { clearTimeout(timer); done(); }
    });
    s.on('close', () => { clearTimeout(timer); resolve(out); });
    s.write(payload);
  });
}
