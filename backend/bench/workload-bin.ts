/**
 * The C programs of the pager benchmark (backend/bench/workloads/*.c): built on demand
 * with gcc into .cache/bin/, and started as line-protocol processes.
 *
 * A workload the pager attaches to must not be our direct child: libuv's SIGCHLD
 * handler waitpid()s on its own children and would swallow the ptrace stops of the
 * injected syscalls. So it runs as a grandchild under a small sh that waits for it
 * (../proc/grandchild.ts), exactly as QEMU is never the monitor's child either.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ElasticmemError } from '../../native/errors.ts';
import { spawnGrandchild, type Grandchild } from '../proc/grandchild.ts';
import { cachePath } from '../vm/guest.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..', '..');

/** Compile workloads/<name>.c into .cache/bin/em-bench-<name> if missing or older than its source. */
export function buildBenchProgram(name: 'workload' | 'uffd-floor'): string {
  const source = path.join(here, 'workloads', `${name}.c`);
  const bin = cachePath('bin', `em-bench-${name}`);
  const srcTime = fs.statSync(source).mtimeMs;
  let fresh = false;
  try {
    fresh = fs.statSync(bin).mtimeMs >= srcTime;
  } catch {
    fresh = false;
  }
  if (!fresh) {
    fs.mkdirSync(path.dirname(bin), { recursive: true });
    // Build under a temporary name and rename: a concurrent run never sees half a binary.
    const tmp = `${bin}.${process.pid}.tmp`;
    try {
      execFileSync('gcc', ['-O2', '-pthread', '-Wall', '-o', tmp, source, '-lm'], { stdio: 'pipe' });
    } catch (e) {
      const err = e as { stderr?: Buffer; message: string };
      throw new ElasticmemError(`cannot build ${path.relative(root, source)} with gcc (apt-get install gcc): ${err.stderr?.toString().trim() || err.message}`, 'EM_BENCH_BUILD');
    }
    fs.renameSync(tmp, bin);
  }
  return bin;
}

export interface LineProcess {
  /** Pid of the program itself (not of its sh launcher). */
  pid: number;
  /** The first line the program printed (its ready line). */
  first: string;
  send(line: string): void;
  /** The next stdout line; rejects on timeout or when the program exits first. */
  next(timeoutMs: number, what: string): Promise<string>;
  /** SIGKILL the program (and its launcher) and wait until it is gone. Idempotent. */
  kill(): Promise<void>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
}

export interface LaunchOptions {
  /** Join this cgroup (v1 cgroup directory) before the program starts. */
  cgroupDir?: string;
  /** Run the program on these CPUs only (taskset before exec). */
  cpus?: number[];
  /** How the first line says the program's pid: JSON field `pid`. Timeout for it. */
  readyTimeoutMs?: number;
}

/**
 * Start `bin args` as a grandchild under sh and wait for its first stdout line, which
 * must be JSON carrying `pid`. stdin stays a pipe to the program (sh gives background
 * jobs /dev/null otherwise, hence the fd 3 dance).
 */
export async function launchLineProcess(bin: string, args: string[], opts: LaunchOptions = {}): Promise<LineProcess> {
  const name = path.basename(bin);
  const withStderr = (sep: string) => (gc.stderr().trim() ? `${sep}${gc.stderr().trim()}` : '');
  const gc: Grandchild = spawnGrandchild([bin, ...args], {
    launcherName: 'em-bench-launcher',
    prelude:
      (opts.cpus?.length ? 'taskset -pc "$EM_CPUS" $$ >/dev/null || exit 96; ' : '') +
      (opts.cgroupDir ? 'echo $$ > "$EM_CGROUP/cgroup.procs" || exit 97; ' : ''),
    env: { ...process.env, EM_CGROUP: opts.cgroupDir ?? '', EM_CPUS: (opts.cpus ?? []).join(',') },
    messages: {
      exited: ({ code, signal }) => `${name} exited (code ${code}, signal ${signal})${withStderr(': ')}`,
      spawnFailed: (e) => `${name} could not be started: ${e.message}`,
      notRunning: ({ code, signal }, what) => `${name} is not running (code ${code}, signal ${signal}) while waiting for ${what}${withStderr(': ')}`,
      timeout: (what, timeoutMs) => `${name}: no ${what} within ${Math.round(timeoutMs / 1000)} s`,
    },
  });
  const { next, kill } = gc;

  let first: string;
  let pid: number;
  try {
    first = await next(opts.readyTimeoutMs ?? 120_000, 'ready line');
    const info = JSON.parse(first) as { pid?: number };
    if (!info.pid) throw new Error(`${name} printed '${first}' instead of its ready line`);
    pid = info.pid;
    gc.setPid(pid);
  } catch (e) {
    await kill();
    if (gc.exitInfo()?.code === 96) throw new ElasticmemError(`cannot pin the workload to CPUs ${opts.cpus?.join(',')} (taskset failed)`, 'EM_BENCH_PIN');
    if (gc.exitInfo()?.code === 97) throw new ElasticmemError(`cannot move the workload into cgroup ${opts.cgroupDir}`, 'EM_BENCH_CGROUP');
    throw e instanceof SyntaxError ? new ElasticmemError(`${name} printed no JSON ready line: ${gc.stderr().trim()}`, 'EM_BENCH_WORKLOAD') : e;
  }
  return {
    pid,
    first,
    send: gc.send,
    next,
    kill,
    exited: gc.exited,
    stderr: gc.stderr,
  };
}
