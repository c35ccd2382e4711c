/**
 * The C programs of the pager benchmark (backend/bench/workloads/*.c): built on demand
 * with gcc into .cache/bin/, and started as line-protocol processes.
 *
 * A workload the pager attaches to must not be our direct child: libuv's SIGCHLD
 * handler waitpid()s on its own children and would swallow the ptrace stops of the
 * injected syscalls (see test/helpers/target.ts). So it runs as a grandchild under a
 * small sh that waits for it, exactly as QEMU is never the monitor's child either.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createInterface, type Interface } from 'node:readline';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ElasticmemError } from '../../native/errors.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.join(here, '..', '..');

/** Compile workloads/<name>.c into .cache/bin/em-bench-<name> if missing or older than its source. */
export function buildBenchProgram(name: 'workload' | 'uffd-floor'): string {
  const source = path.join(here, 'workloads', `${name}.c`);
  const bin = path.join(root, '.cache', 'bin', `em-bench-${name}`);
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
  /** How the first line says the program's pid: JSON field `pid`. Timeout for it. */
  readyTimeoutMs?: number;
}

/**
 * Start `bin args` as a grandchild under sh and wait for its first stdout line, which
 * must be JSON carrying `pid`. stdin stays a pipe to the program (sh gives background
 * jobs /dev/null otherwise, hence the fd 3 dance).
 */
export async function launchLineProcess(bin: string, args: string[], opts: LaunchOptions = {}): Promise<LineProcess> {
  const join = opts.cgroupDir ? 'echo $$ > "$EM_CGROUP/cgroup.procs" || exit 97; ' : '';
  const script = `${join}exec 3<&0; "$@" <&3 3<&- & exec 3<&-; wait $!`;
  const proc: ChildProcess = spawn('sh', ['-c', script, 'em-bench-launcher', bin, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    cwd: '/',
    env: { ...process.env, EM_CGROUP: opts.cgroupDir ?? '' },
  });
  let stderrText = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => {
    stderrText += d;
  });
  proc.stdin!.on('error', () => {}); // a dead program's stdin: the next read reports it
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let waiter: { resolve: (l: string) => void; reject: (e: Error) => void } | undefined;
  const lines: string[] = [];
  let pid = 0;
  const name = path.basename(bin);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('close', (code, signal) => {
      exitInfo = { code, signal };
      const w = waiter;
      waiter = undefined;
      w?.reject(new Error(`${name} exited (code ${code}, signal ${signal})${stderrText.trim() ? `: ${stderrText.trim()}` : ''}`));
      resolve(exitInfo);
    });
    proc.on('error', (e) => {
      exitInfo = { code: null, signal: null };
      waiter?.reject(new Error(`${name} could not be started: ${e.message}`));
      resolve(exitInfo);
    });
  });
  const rl: Interface = createInterface({ input: proc.stdout! });
  rl.on('line', (l) => {
    if (waiter) {
      const w = waiter;
      waiter = undefined;
      w.resolve(l);
    } else lines.push(l);
  });

  function next(timeoutMs: number, what: string): Promise<string> {
    if (lines.length) return Promise.resolve(lines.shift()!);
    if (exitInfo) return Promise.reject(new Error(`${name} is not running (code ${exitInfo.code}, signal ${exitInfo.signal}) while waiting for ${what}${stderrText.trim() ? `: ${stderrText.trim()}` : ''}`));
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiter = undefined;
        reject(new Error(`${name}: no ${what} within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      waiter = {
        resolve: (l) => { clearTimeout(timer); resolve(l); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      };
    });
  }

  async function kill(): Promise<void> {
    if (!exitInfo) {
      // The program first (the launcher then exits); the launcher too if the program never started.
      for (const p of [pid, proc.pid]) {
        if (!p) continue;
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* already gone */
        }
        if (p === pid) break;
      }
      await exited;
    }
    rl.close();
  }

  let first: string;
  try {
    first = await next(opts.readyTimeoutMs ?? 120_000, 'ready line');
    const info = JSON.parse(first) as { pid?: number };
    if (!info.pid) throw new Error(`${name} printed '${first}' instead of its ready line`);
    pid = info.pid;
  } catch (e) {
    await kill();
    if (exitInfo?.code === 97) throw new ElasticmemError(`cannot move the workload into cgroup ${opts.cgroupDir}`, 'EM_BENCH_CGROUP');
    throw e instanceof SyntaxError ? new ElasticmemError(`${name} printed no JSON ready line: ${stderrText.trim()}`, 'EM_BENCH_WORKLOAD') : e;
  }
  return {
    pid,
    first,
    send: (line) => { proc.stdin!.write(line + '\n'); },
    next,
    kill,
    exited,
    stderr: () => stderrText,
  };
}
