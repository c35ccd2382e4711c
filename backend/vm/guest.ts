/**
 * The elasticmem test/demo guest (built by vm-configs/build-guest.sh into .cache/guest)
 * and its serial console. The guest's workload (vm-configs/guest/workload.c) prints
 * fixed-format lines; ConsoleReader follows the console file and parses them.
 *
 * Product code (`elasticmem demo`, `bench vm`) and the tests (test/helpers/guest.ts)
 * share this module; it knows nothing about test frameworks.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/**
 * A path under the checkout's .cache folder, its link resolved. In a checkout other
 * users cannot reach (root's home, mode 700) scripts/bootstrap.sh makes .cache a link
 * to a folder under /var/cache/elasticmem: files that libvirt's QEMU (user
 * libvirt-qemu) or a target run as nobody open must be named by a path that does not
 * pass through the checkout.
 */
export function cachePath(...parts: string[]): string {
  let dir = path.join(REPO_ROOT, '.cache');
  try { dir = fs.realpathSync(dir); } catch { /* not made yet */ }
  return path.join(dir, ...parts);
}

export const GUEST_DIR = cachePath('guest');

export type AccessPattern = 'seq' | 'random' | 'zipf';

/** Workload parameters, passed on the guest kernel command line as em.*. */
export interface WorkloadParams {
  /** MiB the workload fills and verifies (must fit the guest's boot RAM with ~60 MiB to spare). */
  sizeMiB: number;
  pattern: AccessPattern;
  /** Fraction of pages rewritten per pass, 0..1. */
  write: number;
  seed: number;
  /** Number of passes, 0 = forever. */
  passes: number;
  /** Sleep between passes (ms); keeps long-running guests from flooding the console. */
  pauseMs?: number;
  /** After the last pass: 'idle' (default, keeps reporting MemTotal) or 'poweroff'. */
  after?: 'idle' | 'poweroff';
}

export const DEFAULT_WORKLOAD: WorkloadParams = { sizeMiB: 32, pattern: 'seq', write: 0.25, seed: 1, passes: 0 };

export interface GuestImage {
  kernel: string;
  initrd: string;
}

/** Paths of the built guest; throws naming the fix when it is missing. */
export function guestImage(): GuestImage {
  const kernel = path.join(GUEST_DIR, 'vmlinuz');
  const initrd = path.join(GUEST_DIR, 'initrd.img');
  for (const f of [kernel, initrd]) {
    if (!fs.existsSync(f)) {
      throw new Error(`test guest image missing (${f}); run 'bash scripts/bootstrap.sh' (or vm-configs/build-guest.sh)`);
    }
  }
  return { kernel, initrd };
}

/** Validates workload parameters; the guest would otherwise silently fall back to defaults. */
export function checkWorkload(w: WorkloadParams): void {
  if (!Number.isInteger(w.sizeMiB) || w.sizeMiB < 1) throw new Error(`workload sizeMiB must be a positive integer, got ${w.sizeMiB}`);
  if (!['seq', 'random', 'zipf'].includes(w.pattern)) throw new Error(`workload pattern must be seq|random|zipf, got ${w.pattern}`);
  if (!(w.write >= 0 && w.write <= 1)) throw new Error(`workload write fraction must be within 0..1, got ${w.write}`);
  if (!Number.isInteger(w.seed) || w.seed < 0) throw new Error(`workload seed must be a non-negative integer, got ${w.seed}`);
  if (!Number.isInteger(w.passes) || w.passes < 0) throw new Error(`workload passes must be a non-negative integer (0 = forever), got ${w.passes}`);
  if (w.pauseMs !== undefined && (!Number.isInteger(w.pauseMs) || w.pauseMs < 0)) throw new Error(`workload pauseMs must be a non-negative integer, got ${w.pauseMs}`);
}

/**
 * Guest kernel command line. swiotlb=noforce: with maxmem above 4 GiB of address space
 * the kernel would otherwise reserve a 64 MiB bounce buffer nothing here needs
 * (virtio without ACCESS_PLATFORM does not use it). panic=-1 turns a guest panic into
 * a reboot, which the templates map to "destroy".
 */
export function guestCmdline(w: WorkloadParams): string {
  checkWorkload(w);
  const parts = [
    'console=ttyS0',
    'panic=-1',
    'swiotlb=noforce',
    `em.size=${w.sizeMiB}`,
    `em.pattern=${w.pattern}`,
    `em.write=${w.write}`,
    `em.seed=${w.seed}`,
    `em.passes=${w.passes}`,
  ];
  if (w.pauseMs) parts.push(`em.pause=${w.pauseMs}`);
  if (w.after === 'poweroff') parts.push('em.after=poweroff');
  return parts.join(' ');
}

export interface WorkloadPass {
  pass: number;
  pages: number;
  verified: number;
  corrupt: number;
  ms: number;
}

const PASS_RE = /^ELASTICMEM-WORKLOAD pass=(\d+) pages=(\d+) verified=(\d+) corrupt=(\d+) ms=(\d+)\s*$/;
const MEMTOTAL_RE = /^ELASTICMEM-MEMTOTAL kb=(-?\d+)\s*$/;
const DONE_RE = /^ELASTICMEM-WORKLOAD-DONE corrupt=(\d+)\s*$/;

/** Parses one `ELASTICMEM-WORKLOAD pass=...` line, or returns null. */
export function parseWorkloadLine(line: string): WorkloadPass | null {
  const m = PASS_RE.exec(line);
  if (!m) return null;
  return { pass: +m[1], pages: +m[2], verified: +m[3], corrupt: +m[4], ms: +m[5] };
}

/**
 * Follows a serial-console file (QEMU appends to it). Reads are incremental and
 * synchronous; waitFor polls every 100 ms. Methods never consume lines: callers that
 * wait for "the next" event pass `from: reader.mark()`.
 */
export class ConsoleReader {
  readonly path: string;
  private buf = '';
  private fd: number | null = null;
  private offset = 0;
  /** Parsed workload lines seen so far, in order. */
  readonly passes: WorkloadPass[] = [];
  /** Latest MemTotal the guest reported (kB), or null before the first report. */
  memTotalKb: number | null = null;
  /** Total corruption reported at the end of the workload, or null while it runs. */
  doneCorrupt: number | null = null;
  private partial = '';

  constructor(file: string) {
    this.path = file;
  }

  /** Pulls new bytes from the file and parses complete lines. */
  poll(): void {
    if (this.fd === null) {
      try {
        this.fd = fs.openSync(this.path, 'r');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
    }
    const chunk = Buffer.alloc(1 << 16);
    for (;;) {
      const n = fs.readSync(this.fd, chunk, 0, chunk.length, this.offset);
      if (n <= 0) break;
      this.offset += n;
      // The serial line uses CRLF; normalise.
      const text = chunk.subarray(0, n).toString('latin1').replace(/\r/g, '');
      this.buf += text;
      const lines = (this.partial + text).split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) this.parseLine(line);
    }
  }

  private parseLine(line: string): void {
    const p = parseWorkloadLine(line);
    if (p) {
      this.passes.push(p);
      return;
    }
    let m = MEMTOTAL_RE.exec(line);
    if (m) {
      this.memTotalKb = +m[1];
      return;
    }
    m = DONE_RE.exec(line);
    if (m) this.doneCorrupt = +m[1];
  }

  /** Everything read so far. */
  text(): string {
    this.poll();
    return this.buf;
  }

  /** A position to pass as `from` to wait only for output produced after now. */
  mark(): number {
    this.poll();
    return this.buf.length;
  }

  /** Last n lines, for error messages. */
  tail(n = 25): string {
    return this.text().split('\n').slice(-n).join('\n');
  }

  /**
   * Resolves with the first match of `re` in the console output (from `from`, default
   * the beginning). Rejects after timeoutMs with the console tail in the message.
   */
  async waitFor(re: RegExp, timeoutMs: number, opts: { from?: number } = {}): Promise<RegExpMatchArray> {
    const from = opts.from ?? 0;
    const flags = re.flags.replace('g', '');
    const pattern = new RegExp(re.source, flags.includes('m') ? flags : flags + 'm');
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = pattern.exec(this.text().slice(from));
      if (m) return m;
      if (Date.now() > deadline) {
        throw new Error(`console ${this.path}: no match for ${re} within ${timeoutMs} ms; last lines:\n${this.tail()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Waits until at least `count` workload passes have been reported; returns them. */
  async waitForPasses(count: number, timeoutMs: number): Promise<WorkloadPass[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.poll();
      if (this.passes.length >= count) return this.passes.slice();
      if (Date.now() > deadline) {
        throw new Error(`console ${this.path}: ${this.passes.length}/${count} workload passes within ${timeoutMs} ms; last lines:\n${this.tail()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Waits until the guest reports MemTotal >= kb; returns the value. */
  async waitForMemTotal(atLeastKb: number, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.poll();
      if (this.memTotalKb !== null && this.memTotalKb >= atLeastKb) return this.memTotalKb;
      if (Date.now() > deadline) {
        throw new Error(`console ${this.path}: MemTotal ${this.memTotalKb} kB, wanted >= ${atLeastKb} kB within ${timeoutMs} ms; last lines:\n${this.tail()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  close(): void {
    if (this.fd !== null) fs.closeSync(this.fd);
    this.fd = null;
  }
}
