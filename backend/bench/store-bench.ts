/**
 * `elasticmem bench store`: 4 KiB page put/get latency (p50, p99 of one batch call) and
 * throughput (pages/s) at batch sizes 1, 16 and 256, with one batch in flight at a time
 * (how the pager drives a store), plus a raw baseline measured in the same run:
 *
 *   redis / redis+cluster  redis-benchmark -d 4096 -c 1 -P <batch> -t set,get (one
 *                          connection, <batch> commands per round trip: the same
 *                          concurrency and round trips as one MSET/MGET of <batch> pages)
 *   memcached              our binary-protocol client on the first server with plain
 *                          4 KiB values: the protocol and server floor, without the
 *                          envelope, the hash ring or batch splitting
 *   memory:, file:, aerospike  no raw baseline (raw: null)
 *
 * overheadVsRaw = adapter time per page at batch 16 / raw time per page at batch 16,
 * each the mean of put and get (per-op ratios are reported too).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import crypto from 'node:crypto';
import { openStore, parseStoreUri, type PageStore } from '../../kvstore/index.ts';
import { McConn } from '../../kvstore/memcached-client.ts';
import { ElasticmemError } from '../../native/errors.ts';

const execFileP = promisify(execFile);

export const BATCH_SIZES = [1, 16, 256] as const;

export interface BatchResult {
  putP50Us: number;
  putP99Us: number;
  getP50Us: number;
  getP99Us: number;
  putPagesPerSec: number;
  getPagesPerSec: number;
}

export interface RawResult {
  /** What produced the baseline. */
  tool: string;
  batches: Record<string, { setPagesPerSec: number; getPagesPerSec: number; setUsPerPage: number; getUsPerPage: number }>;
}

export interface StoreBenchResult {
  store: string;
  batches: Record<string, BatchResult>;
  raw: RawResult | null;
  overheadVsRaw: number | null;
  overheadVsRawPut: number | null;
  overheadVsRawGet: number | null;
  /** Measurement settings, for reading the numbers. */
  settings: { inFlight: 1; valueBytes: 4096; secondsPerPhase: number; envelope: boolean };
}

export interface StoreBenchProgress { done: number; total: number; label: string }

export interface StoreBenchOptions {
  uri: string;
  json?: boolean;
  onProgress?: (p: StoreBenchProgress) => void;
  /** Time per measured phase (one op at one batch size), default 1.2 s. */
  secondsPerPhase?: number;
  keyFile?: string;
  compress?: boolean;
}

function percentile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

/** Run `op` back to back for `seconds` (after a short warm-up); batch latencies in µs. */
async function phase(seconds: number, op: (i: number) => Promise<unknown>): Promise<{ lat: Float64Array; n: number; elapsedS: number }> {
  for (let i = 0; i < 20; i++) await op(i);
  const lat: number[] = [];
  const t0 = process.hrtime.bigint();
  const until = t0 + BigInt(Math.round(seconds * 1e9));
  let i = 0;
  for (;;) {
    const a = process.hrtime.bigint();
    await op(i++);
    const b = process.hrtime.bigint();
    lat.push(Number(b - a) / 1000);
    if (b >= until && lat.length >= 50) break;
  }
  const elapsedS = Number(process.hrtime.bigint() - t0) / 1e9;
  const arr = Float64Array.from(lat).sort();
  return { lat: arr, n: lat.length, elapsedS };
}

export async function runStoreBench(o: StoreBenchOptions): Promise<StoreBenchResult> {
  const spec = parseStoreUri(o.uri);
  const secs = o.secondsPerPhase ?? 1.2;
  const store = await openStore(o.uri, { keyFile: o.keyFile, compress: o.compress });
  const hasRaw = spec.kind === 'redis' || spec.kind === 'redis-cluster' || spec.kind === 'memcached';
  const total = BATCH_SIZES.length * 2 + (hasRaw ? 1 : 0);
  let done = 0;
  const progress = (label: string) => o.onProgress?.({ done, total, label });
  const vm = `bench-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  // A pool of random pages (incompressible, as guest memory mostly is to a store).
  const pool = Array.from({ length: 256 }, () => crypto.randomBytes(4096));
  const batches: Record<string, BatchResult> = {};
  try {
    for (const B of BATCH_SIZES) {
      // Each batch size writes its own key range; gets read back what was written.
      const base = B * 1_000_000;
      const span = Math.max(B * 64, 4096); // keys cycled through, so gets always hit
      const keys = (i: number) => Array.from({ length: B }, (_, j) => base + ((i * B + j) % span));
      const data = (i: number) => Array.from({ length: B }, (_, j) => pool[(i * B + j) % pool.length]!);
      progress(`put, batch ${B}`);
      const put = await phase(secs, (i) => store.put(vm, keys(i), data(i)));
      done++;
      // Make sure every key of the span exists before timing gets.
      for (let i = 0; i * B < span; i++) await store.put(vm, keys(i), data(i));
      progress(`get, batch ${B}`);
      const get = await phase(secs, async (i) => {
        const r = await store.get(vm, keys(i));
        if (r[0] === null) throw new ElasticmemError(`bench: page ${keys(i)[0]} missing on read back`, 'BENCH_INTEGRITY');
      });
      done++;
      batches[String(B)] = {
        putP50Us: round(percentile(put.lat, 0.5)),
        putP99Us: round(percentile(put.lat, 0.99)),
        getP50Us: round(percentile(get.lat, 0.5)),
        getP99Us: round(percentile(get.lat, 0.99)),
        putPagesPerSec: Math.round((put.n * B) / put.elapsedS),
        getPagesPerSec: Math.round((get.n * B) / get.elapsedS),
      };
    }
  } finally {
    try { await store.dropVm(vm); } catch { /* reported by the measurement already */ }
    await store.close();
  }

  let raw: RawResult | null = null;
  if (hasRaw) {
    progress('raw baseline');
    raw = spec.kind === 'memcached' ? await memcachedRaw(spec.servers[0]!, secs) : await redisRaw(spec, secs);
    done++;
    progress('done');
  }
  const perPage = (pps: number) => 1e6 / pps;
  let overheadVsRaw: number | null = null;
  let overheadVsRawPut: number | null = null;
  let overheadVsRawGet: number | null = null;
  const r16 = raw?.batches['16'];
  const a16 = batches['16'];
  if (r16 && a16) {
    overheadVsRawPut = round(perPage(a16.putPagesPerSec) / r16.setUsPerPage, 2);
    overheadVsRawGet = round(perPage(a16.getPagesPerSec) / r16.getUsPerPage, 2);
    overheadVsRaw = round((perPage(a16.putPagesPerSec) + perPage(a16.getPagesPerSec)) / (r16.setUsPerPage + r16.getUsPerPage), 2);
  }
  return {
    store: store.uri,
    batches,
    raw,
    overheadVsRaw,
    overheadVsRawPut,
    overheadVsRawGet,
    settings: { inFlight: 1, valueBytes: 4096, secondsPerPhase: secs, envelope: !store.capabilities.native },
  };
}

type RedisSpec = Extract<ReturnType<typeof parseStoreUri>, { kind: 'redis' | 'redis-cluster' }>;

/** redis-benchmark with one connection and -P <batch>: the same round trips as our batches. */
async function redisRaw(spec: RedisSpec, secs: number): Promise<RawResult> {
  const node = spec.kind === 'redis' ? { host: spec.host, port: spec.port } : spec.nodes[0]!;
  const common = ['-h', node.host, '-p', String(node.port), '-d', '4096', '-c', '1', '-t', 'set,get', '--csv'];
  if (spec.password !== undefined) common.push('-a', spec.password);
  if (spec.username !== undefined) common.push('--user', spec.username);
  if (spec.tls) common.push('--tls');
  if (spec.kind === 'redis' && spec.db) common.push('--dbnum', String(spec.db));
  if (spec.kind === 'redis-cluster') common.push('--cluster');
  const out: RawResult['batches'] = {};
  for (const B of BATCH_SIZES) {
    // Size -n so each run takes about `secs` at typical loopback speeds.
    const n = B === 1 ? Math.round(15_000 * secs) : Math.round(150_000 * secs);
    const args = [...common, '-n', String(n), ...(B > 1 ? ['-P', String(B)] : [])];
    let stdout: string;
    try {
      ({ stdout } = await execFileP('redis-benchmark', args, { timeout: 120_000 }));
    } catch (e) {
      throw new ElasticmemError(`raw baseline: redis-benchmark failed: ${(e as Error).message.split('\n')[0]} (is redis-benchmark installed? apt install redis-tools)`, 'BENCH_RAW_FAILED');
    }
    const rps = (name: string) => {
      const m = new RegExp(`^"${name}","([\\d.]+)"`, 'm').exec(stdout);
      if (!m) throw new ElasticmemError(`raw baseline: no ${name} line in redis-benchmark output: ${stdout.slice(0, 200)}`, 'BENCH_RAW_FAILED');
      return Number(m[1]);
    };
    const set = rps('SET');
    const get = rps('GET');
    out[String(B)] = { setPagesPerSec: Math.round(set), getPagesPerSec: Math.round(get), setUsPerPage: round(1e6 / set, 2), getUsPerPage: round(1e6 / get, 2) };
  }
  // redis-benchmark wrote its own test key; remove it.
  try {
    const cli = ['-h', node.host, '-p', String(node.port), ...(spec.password !== undefined ? ['-a', spec.password, '--no-auth-warning'] : []), ...(spec.kind === 'redis-cluster' ? ['-c'] : []), ...(spec.kind === 'redis' && spec.db ? ['-n', String(spec.db)] : [])];
    await execFileP('redis-cli', [...cli, 'DEL', 'key:__rand_int__'], { timeout: 5000 });
  } catch { /* best effort */ }
  return { tool: 'redis-benchmark -d 4096 -c 1 -P <batch> -t set,get', batches: out };
}

/** Plain 4 KiB values on the first server through the batched binary-protocol client. */
async function memcachedRaw(server: { host: string; port: number }, secs: number): Promise<RawResult> {
  const conn = new McConn(server.host, server.port, { connectTimeoutMs: 2000, opTimeoutMs: 5000 });
  const out: RawResult['batches'] = {};
  const value = crypto.randomBytes(4096);
  try {
    for (const B of BATCH_SIZES) {
      const keys = Array.from({ length: B }, (_, j) => Buffer.from(`em-raw-bench:${process.pid}:${j}`));
      const values = keys.map(() => value);
      const idx = keys.map((_, j) => j);
      const res: (Buffer | null)[] = new Array(B);
      const set = await phase(secs / 2, () => conn.setMany(keys, values));
      const get = await phase(secs / 2, () => conn.getMany(keys, idx, res));
      const setPps = (set.n * B) / set.elapsedS;
      const getPps = (get.n * B) / get.elapsedS;
      out[String(B)] = { setPagesPerSec: Math.round(setPps), getPagesPerSec: Math.round(getPps), setUsPerPage: round(1e6 / setPps, 2), getUsPerPage: round(1e6 / getPps, 2) };
      await conn.deleteMany(keys);
    }
  } finally {
    conn.close();
  }
  return { tool: 'memcached binary protocol, plain 4 KiB values, first server, no envelope', batches: out };
}
