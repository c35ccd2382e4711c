/**
 * The C test target (test/fixtures/target.c) from TypeScript: build it, start it
 * (as root or as `nobody`), talk to it one command at a time, kill it on teardown.
 * It stands in for QEMU: a shared memfd region and a private anonymous region,
 * written and verified by the target's own threads while the pager works on them.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RegionSpec } from '../../native/index.ts';
import { spawnGrandchild, type Grandchild } from '../../backend/proc/grandchild.ts';
import { cachePath } from '../../backend/vm/guest.ts';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Compile test/fixtures/<name>.c into .cache/bin/<binName> when the binary is missing
 * or older than its source. Returns the binary path.
 */
export function buildFixture(name: string, binName = name): string {
  const source = path.join(root, 'test', 'fixtures', `${name}.c`);
  const bin = cachePath('bin', binName);
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
  /** Map a third region, "extra", as QEMU maps a hot-added DIMM's backend; its RegionSpec. */
  addRegion(kind: 'memfd' | 'anon', mib: number): Promise<RegionSpec>;
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
  // direct child (backend/proc/grandchild.ts says why). setpriv execs in place, so the
  // target's pid is the one it prints.
  const argv =
    opts.user === 'nobody'
      ? ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', bin, ...args]
      : [bin, ...args];
  let targetPid = 0; // known once the target printed its JSON line
  const who = () => `em-target (pid ${targetPid || gc.proc.pid})`;
  const gc: Grandchild = spawnGrandchild(argv, {
    launcherName: 'em-target-launcher',
    messages: {
      exited: ({ code, signal }) => `${who()} exited (code ${code}, signal ${signal}); stderr: ${gc.stderr().trim()}`,
      spawnFailed: (e) => `em-target could not be started: ${e.message}`,
      notRunning: ({ code, signal }, what) => `${who()} is not running (code ${code}, signal ${signal}) for '${what}'; stderr: ${gc.stderr().trim()}`,
      timeout: (what, timeoutMs) => `${who()}: no reply to '${what}' within ${timeoutMs} ms`,
    },
  });
  const { proc, kill, exited } = gc;
  const nextLine = gc.next;
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
    throw new Error(`em-target printed '${first}' instead of its region JSON; stderr: ${gc.stderr().trim()}`);
  }
  targetPid = info.pid;
  gc.setPid(targetPid);

  // One command at a time; after a timeout the reply stream is out of step, so refuse further commands.
  let chain: Promise<unknown> = Promise.resolve();
  let desynced: string | undefined;
  function cmd(line: string, o: { timeoutMs?: number } = {}): Promise<string> {
    const timeoutMs = o.timeoutMs ?? defaultTimeout(line);
    const run = async (): Promise<string> => {
      if (desynced) throw new Error(`em-target (pid ${info.pid}): not usable after an earlier timeout ('${desynced}')`);
      if (gc.exitInfo()) throw new Error(`em-target (pid ${info.pid}) has exited; cannot run '${line}'`);
      gc.send(line.trim());
      let reply: string;
      try {
        reply = await nextLine(timeoutMs, line);
      } catch (e) {
        if (!gc.exitInfo()) desynced = line;
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

  async function addRegion(kind: 'memfd' | 'anon', mib: number): Promise<RegionSpec> {
    const reply = await cmd(`addmem ${kind} ${mib}`);
    const m = /start=(0x[0-9a-f]+) length=(\d+)/.exec(reply);
    if (!m) throw new Error(`em-target addmem: unexpected reply '${reply}'`);
    const lo = BigInt(m[1]!), length = Number(m[2]);
    return kind === 'memfd'
      ? { start: m[1]!, length, kind, filePath: `/proc/${info.pid}/map_files/${procHex(lo)}-${procHex(lo + BigInt(length))}`, fileOffset: 0, name: 'elasticmem-extra' }
      : { start: m[1]!, length, kind, name: 'extra' };
  }

  return {
    pid: info.pid,
    memfd: info.memfd,
    anon: info.anon,
    proc,
    cmd,
    regionSpecs,
    addRegion,
    kill,
    exited,
    stderr: gc.stderr,
  };
}

/** Generous default: churn/hammer run for their ms plus slack; everything else may fault every page. */
function defaultTimeout(line: string): number {
  const [c, , a, , d] = line.trim().split(/\s+/);
  if (c === 'churn') return Number(a) + 60_000;
  if (c === 'hammer') return Number(d) + 60_000;
  return 60_000;
}
