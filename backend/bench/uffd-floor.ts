/**
 * uffdFloorUs: the single-fault latency of a bare C userfaultfd handler
 * (workloads/uffd-floor.c) measured in the same run as the pager, so the pager's fault
 * cost can be read against what this machine's kernel allows at best.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { buildBenchProgram } from './workload-bin.ts';
import { ElasticmemError } from '../../native/errors.ts';

const run = promisify(execFile);

export interface FloorSample {
  faults: number;
  kind: 'anon' | 'memfd';
  /** Touch to return, seen by the faulting thread. */
  roundTripUs: { p50: number; p99: number };
  /** Handler side: read() returned to UFFDIO_COPY returned. */
  serviceUs: { p50: number; p99: number };
}

export interface UffdFloor {
  /** Median round trip over the repeats, anonymous memory (the headline uffdFloorUs). */
  floorUs: number;
  /** The same for a shared memfd: the kind of memory the pager benchmark pages. */
  memfdFloorUs: number;
  anon: FloorSample[];
  memfd: FloorSample[];
  /** bench pager only: each sample of the floor under the run's own touch loop (uffdFloorWorkloadUs is their median). */
  workloadUs?: number[];
}

/** One floor sample; with `cpu`, the faulting thread and the handler share that CPU (as under `bench pager --pin`). */
export async function measureFloor(kind: 'anon' | 'memfd', faults = 4000, cpu?: number): Promise<FloorSample> {
  const bin = buildBenchProgram('uffd-floor');
  try {
    const argv = [String(faults), kind];
    const { stdout } = cpu === undefined ? await run(bin, argv, { timeout: 60_000 }) : await run('taskset', ['-c', String(cpu), bin, ...argv], { timeout: 60_000 });
    return JSON.parse(stdout.trim()) as FloorSample;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new ElasticmemError(`the uffd floor measurement failed: ${err.stderr?.trim() || err.message}`, 'EM_BENCH_FLOOR');
  }
}

/** The median (of an even count: the mean of the two middle values). */
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return 0;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** One floor sample of each kind. */
export async function sampleFloor(faults = 4000, cpu?: number): Promise<{ anon: FloorSample; memfd: FloorSample }> {
  return { anon: await measureFloor('anon', faults, cpu), memfd: await measureFloor('memfd', faults, cpu) };
}

/** The floor from samples: the median of the anonymous round-trip medians. */
export function floorOf(samples: { anon: FloorSample; memfd: FloorSample }[]): UffdFloor {
  const anon = samples.map((s) => s.anon);
  const memfd = samples.map((s) => s.memfd);
  return { floorUs: median(anon.map((s) => s.roundTripUs.p50)), memfdFloorUs: median(memfd.map((s) => s.roundTripUs.p50)), anon, memfd };
}

/** A few repeats of each kind back to back (first touches of a fresh process are noisy); the median of the medians. */
export async function measureUffdFloor(repeats = 3, faults = 4000): Promise<UffdFloor> {
  const samples = [];
  for (let i = 0; i < repeats; i++) samples.push(await sampleFloor(faults));
  return floorOf(samples);
}

export { median };
