/**
 * The C test target (test/fixtures/target.c) from TypeScript: build it, start it
 * (as root or as `nobody`), talk to it one command at a time, kill it on teardown.
 * It stands in for QEMU: a shared memfd region and a private anonymous region,
 * written and verified by the target's own threads while the pager works on them.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RegionSpec } from '../../native/index.ts';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Compile test/fixtures/<name>.c into .cache/bin/<binName> when the binary is missing
 * or older than its source. Returns the binary path.
 */
export function buildFixture(name: string, binName = name): string {
  const source = path.join(root, 'test', 'fixtures', `${name}.c`);
  const bin = path.join(root, '.cache', 'bin', binName);
  const src = fs.statSync(source);
  let fresh = false;
  try {
    fresh = fs.statSync(bin).mtimeMs >= src.mtimeMs;
  } catch {
    fresh = false;
  }
  if (!fresh) {
    fs.mkdirSync(path.dirname(bin), { recursive: true });
    // Compile to a temporary name and rename: concurrent test files never see a half-written binary.
    const tmp = `${bin}.${process.pid}.tmp`;
    execFileSync('gcc', ['-O2', '-pthread', '-Wall', '-o', tmp, source], { stdio: 'pipe' });
    fs.renameSync(tmp, bin);
  }
  // `nobody` must be able to run it.
  fs.chmodSync(bin, 0o755);
  return bin;
}

/** Compile the target (test/fixtures/target.c -> .cache/bin/em-target) if needed. Returns the binary path. */
export function buildTarget(): string {
  return buildFixture('target', 'em-target');
}

export interface TargetRegion {
  /** Start address in the target, as printed ("0x7f..."). */
  start: string;
  length: number;
  name?: string;
}

export interface TargetOptions {
  memfdMiB: number;
  anonMiB: number;
  /** Run the target unprivileged (like libvirt's QEMU). */
  user?: 'nobody';
}

/** Minimal view of the ava test context: only teardown is needed. */
export interface TeardownContext {
  teardown(fn: () => void | Promise<void>): void;
}

export interface Target {
  pid: number;
  memfd: TargetRegion & { name: string };
  anon: TargetRegion;
  proc: ChildProcess;
  /** Send one command line; resolves with the reply line ("ok ..."). Rejects on "err ...", timeout or death. */
  cmd(line: string, opts?: { timeoutMs?: number }): Promise<string>;
  /** RegionSpec objects (native/index.ts) for both regions, ready for pagerStart. */
  regionSpecs(): RegionSpec[];
  /** SIGKILL the target and wait for it to be gone (idempotent). */
  kill(): Promise<void>;
  /** Resolves when the target has exited (code as a shell reports it: 128+N after signal N). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Everything the target wrote to stderr so far. */
  stderr(): string;
}

/** Parse "key=value" pairs of a reply line into numbers ("ok writes=3 corrupt=0" -> {writes:3, corrupt:0}). */
export function parseReply(line: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of line.matchAll(/(\w+)=(-?\d+)/g)) out[m[1]] = Number(m[2]);
  return out;
}

/** Hex as /proc shows it in map_files names: lowercase, no 0x, no padding. */
function procHex(n: bigint): string {
  return n.toString(16);
}

export async function startTarget(t: TeardownContext, opts: TargetOptions): Promise<Target> {
  const bin = buildTarget();
  const args = [String(opts.memfdMiB), String(opts.anonMiB)];
  // The target runs as a grandchild under a small sh that waits for it, never as our
  // direct child: libuv's SIGCHLD handler calls waitpid() on its own children, and
  // would swallow the ptrace stops of the thread elasticmem injects into and report
  // them as an exit. QEMU is never the monitor's child either. `exec 3<&0` hands our
  // stdin pipe to the background job (sh gives background jobs /dev/null otherwise).
  // setpriv execs in place, so the target's pid is the one it prints.
  const launch = 'exec 3<&0; "$@" <&3 3<&- & exec 3<&-; wait $!';
  const argv =
    opts.user === 'nobody'
      ? ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', bin, ...args]
      : [bin, ...args];
  const proc = spawn('sh', ['-c', launch, 'em-target-launcher', ...argv], { stdio: ['pipe', 'pipe', 'pipe'], cwd: '/' });

  let targetPid = 0; // known once the target printed its JSON line
  let stderrText = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => {
    stderrText += d;
  });
  // A write to a dead target's stdin must become a rejected cmd, not an unhandled 'error'.
  proc.stdin!.on('error', () => {});

  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    // 'close' (not 'exit'): every reply line has been read by then.
    proc.on('close', (code, signal) => {
      exitInfo = { code, signal };
      failPending(new Error(`em-target (pid ${targetPid || proc.pid}) exited (code ${code}, signal ${signal}); stderr: ${stderrText.trim()}`));
      resolve(exitInfo);
    });
    proc.on('error', (e) => {
      exitInfo = { code: null, signal: null };
      failPending(new Error(`em-target could not be started: ${e.message}`));
      resolve(exitInfo);
    });
  });

  // Reply lines arrive in order; each pending command takes the next one.
  const lines: string[] = [];
  let waiter: { resolve: (l: string) => void; reject: (e: Error) => void } | undefined;
  function failPending(e: Error): void {
    const w = waiter;
    waiter = undefined;
    w?.reject(e);
  }
  const rl = createInterface({ input: proc.stdout! });
  rl.on('line', (l) => {
    if (waiter) {
      const w = waiter;
      waiter = undefined;
      w.resolve(l);
    } else lines.push(l);
  });
  function nextLine(timeoutMs: number, what: string): Promise<string> {
    if (lines.length) return Promise.resolve(lines.shift()!);
    if (exitInfo)
      return Promise.reject(
        new Error(`em-target (pid ${targetPid || proc.pid}) is not running (code ${exitInfo.code}, signal ${exitInfo.signal}) for '${what}'; stderr: ${stderrText.trim()}`),
      );
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiter = undefined;
        reject(new Error(`em-target (pid ${targetPid || proc.pid}): no reply to '${what}' within ${timeoutMs} ms`));
      }, timeoutMs);
      waiter = {
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  async function kill(): Promise<void> {
    if (!exitInfo) {
      // Kill the target itself (the launcher then exits with 137); the launcher too if
      // the target never started.
      for (const pid of [targetPid, proc.pid]) {
        if (!pid) continue;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
        if (pid === targetPid) break;
      }
      await exited;
    }
    rl.close();
  }
  t.teardown(kill);

  const first = await nextLine(10_000, 'startup').catch(async (e) => {
    await kill();
    throw e;
  });
  let info: { pid: number; memfd: TargetRegion & { name: string }; anon: TargetRegion };
  try {
    info = JSON.parse(first);
  } catch {
    await kill();
    throw new Error(`em-target printed '${first}' instead of its region JSON; stderr: ${stderrText.trim()}`);
  }
  targetPid = info.pid;

  // One command at a time; after a timeout the reply stream is out of step, so refuse further commands.
  let chain: Promise<unknown> = Promise.resolve();
  let desynced: string | undefined;
  function cmd(line: string, o: { timeoutMs?: number } = {}): Promise<string> {
    const timeoutMs = o.timeoutMs ?? defaultTimeout(line);
    const run = async (): Promise<string> => {
      if (desynced) throw new Error(`em-target (pid ${info.pid}): not usable after an earlier timeout ('${desynced}')`);
      if (exitInfo) throw new Error(`em-target (pid ${info.pid}) has exited; cannot run '${line}'`);
      proc.stdin!.write(line.trim() + '\n');
      let reply: string;
      try {
        reply = await nextLine(timeoutMs, line);
      } catch (e) {
        if (!exitInfo) desynced = line;
        throw e;
      }
      if (!reply.startsWith('ok')) throw new Error(`em-target '${line}': ${reply}`);
      return reply;
    };
    const p = chain.then(run, run);
    chain = p.catch(() => undefined);
    return p;
  }

  function regionSpecs(): RegionSpec[] {
    const lo = BigInt(info.memfd.start);
    const hi = lo + BigInt(info.memfd.length);
    return [
      {
        start: info.memfd.start,
        length: info.memfd.length,
        kind: 'memfd',
        filePath: `/proc/${info.pid}/map_files/${procHex(lo)}-${procHex(hi)}`,
        fileOffset: 0,
        name: info.memfd.name,
      },
      { start: info.anon.start, length: info.anon.length, kind: 'anon', name: 'anon' },
    ];
  }

  return {
    pid: info.pid,
    memfd: info.memfd,
    anon: info.anon,
    proc,
    cmd,
    regionSpecs,
    kill,
    exited,
    stderr: () => stderrText,
  };
}

/** Generous default: churn/hammer run for their ms plus slack; everything else may fault every page. */
function defaultTimeout(line: string): number {
  const [c, , a, , d] = line.trim().split(/\s+/);
  if (c === 'churn') return Number(a) + 60_000;
  if (c === 'hammer') return Number(d) + 60_000;
  return 60_000;
}
