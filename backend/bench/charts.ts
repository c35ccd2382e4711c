/**
 * Charts of the benchmarks, drawn from their saved `--json` output with vega-lite
 * (compiled to vega, rendered to SVG headlessly: no browser, no canvas, no network).
 *
 *   fault-latency.svg   pager fault latency distribution (CDF) per store   <- bench pager
 *   touch-cost.svg      µs per touch, pager against kernel swap, per workload <- bench pager
 *   miss-rate.svg       misses per touch, per replacement policy and kernel   <- bench pager
 *   vm-slowdown.svg     guest pass time over unattached, per local fraction  <- bench vm
 *   store-latency.svg   µs per page by batch size, put and get, per store    <- bench store
 *
 * Inputs are recognised by shape, so the file names do not matter: one JSON object
 * per file, or several (one per line, as `for ...; do elasticmem bench ... --json; done`
 * writes them). Every mark carries its values in an aria-label (vega-lite's default
 * description), so a chart can be checked against its data by reading the SVG.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import { ElasticmemError } from '../../native/errors.ts';
import type { VmBenchResult } from './vm-bench.ts';
import type { PagerBenchResult } from './pager-bench.ts';
import type { StoreBenchResult } from './store-bench.ts';

export interface Results {
  vm: VmBenchResult[];
  pager: PagerBenchResult[];
  store: StoreBenchResult[];
  /** Files (or lines) that were read, per kind, and what was ignored and why. */
  sources: { file: string; kind: 'vm' | 'pager' | 'store' }[];
  ignored: { file: string; why: string }[];
}

type Json = Record<string, unknown>;

/** Which benchmark produced this object, or null. */
export function kindOf(o: unknown): 'vm' | 'pager' | 'store' | null {
  if (typeof o !== 'object' || o === null) return null;
  const j = o as Json;
  if (j.bench === 'vm' && Array.isArray(j.stores)) return 'vm';
  if (typeof j.usPerTouch === 'number' && typeof j.workload === 'string') return 'pager';
  if (typeof j.store === 'string' && typeof j.batches === 'object' && j.batches !== null) return 'store';
  return null;
}

/** Objects in a file: a whole JSON value (object or array), else one JSON value per line. */
function objectsIn(text: string): unknown[] {
  try {
    const v = JSON.parse(text) as unknown;
    return Array.isArray(v) ? v : [v];
  } catch {
    return text.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
      try { return JSON.parse(l) as unknown; } catch { return undefined; }
    });
  }
}

export function loadResults(dir: string): Results {
  if (!fs.existsSync(dir)) {
    throw new ElasticmemError(`--from ${dir}: no such folder; save results first, e.g. elasticmem bench vm --json > ${path.join(dir, 'vm.json')}`, 'BAD_ARG');
  }
  if (!fs.statSync(dir).isDirectory()) {
    throw new ElasticmemError(`--from ${dir}: is a file, not a folder; give the folder that holds the saved *.json results`, 'BAD_ARG');
  }
  const r: Results = { vm: [], pager: [], store: [], sources: [], ignored: [] };
  for (const name of fs.readdirSync(dir).sort()) {
    if (!name.endsWith('.json') && !name.endsWith('.ndjson')) continue;
    const file = path.join(dir, name);
    const objs = objectsIn(fs.readFileSync(file, 'utf8'));
    let used = 0;
    for (const o of objs) {
      const k = kindOf(o);
      if (!k) continue;
      (r[k] as unknown[]).push(o);
      r.sources.push({ file, kind: k });
      used++;
    }
    if (!used) r.ignored.push({ file, why: 'no bench vm / bench pager / bench store result in it' });
  }
  return r;
}

/** A short store name for legends: memory:, file, redis, memcached, redis-cluster, aerospike. */
export function storeLabel(uri: string): string {
  const m = /^([a-z+]+):/i.exec(uri);
  if (!m) return uri;
  const s = m[1]!.toLowerCase();
  if (s === 'memory') return 'memory:';
  if (s === 'redis+cluster' || s === 'rediss+cluster') return 'redis-cluster';
  if (s === 'rediss') return 'redis (TLS)';
  return s;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
};
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

type Spec = vl.TopLevelSpec;
const SCHEMA = 'https://vega.github.io/schema/vega-lite/v5.json';
const FONT = { config: { font: 'DejaVu Sans, Helvetica, Arial, sans-serif', view: { stroke: '#ddd' } } };

export interface Chart {
  /** File name in the output folder. */
  file: string;
  title: string;
  /** The data the chart shows, one row per mark (what the tests compare against the SVG). */
  rows: Json[];
  spec: Spec;
}

// --------------------------------------------------------------- fault latency (pager)

/** CDF of the pager's fault latency per store, from the histograms of every pager run of that store. */
export function faultLatencyChart(all: PagerBenchResult[]): Chart | null {
  // Stores are compared on the same workload: the random runs when there are any
  // (prefetch makes seq faults a different thing: one fault brings a whole run).
  const random = all.filter((p) => p.workload === 'random');
  const pager = random.length ? random : all;
  const which = random.length ? 'random-workload runs' : 'all runs';
  const byStore = new Map<string, { counts: Map<number, number>; runs: string[] }>();
  for (const p of pager) {
    const h = p.pager?.latencyHistogram;
    if (!h || !Array.isArray(h.boundsUs) || !h.boundsUs.length) continue;
    // private memory (bench pager --memory private) is paged another way: its own curve
    const key = storeLabel(p.store) + (p.memory === 'private' ? ', private memory' : '');
    const e = byStore.get(key) ?? { counts: new Map<number, number>(), runs: [] as string[] };
    h.boundsUs.forEach((b, i) => e.counts.set(b, (e.counts.get(b) ?? 0) + (h.counts[i] ?? 0)));
    e.runs.push(`${p.workload}/${p.policy}`);
    byStore.set(key, e);
  }
  const rows: Json[] = [];
  for (const [store, e] of byStore) {
    const total = [...e.counts.values()].reduce((a, b) => a + b, 0);
    if (!total) continue;
    let acc = 0;
    // Buckets with no fault add no step; keep them out (fewer marks, same curve).
    for (const b of [...e.counts.keys()].sort((x, y) => x - y)) {
      const c = e.counts.get(b)!;
      if (!c) continue;
      acc += c;
      rows.push({ store: `${store} (${total} faults)`, latencyUs: b, fractionOfFaults: round(acc / total, 4) });
    }
  }
  if (!rows.length) return null;
  return {
    file: 'fault-latency.svg',
    title: 'Pager fault latency (fault read to resolved), cumulative, per store',
    rows,
    spec: {
      $schema: SCHEMA,
      ...FONT,
      title: { text: 'Pager fault latency per store (bench pager)', subtitle: `cumulative fraction of faults resolved within x µs (fault read to resolved); ${which} of each store pooled` },
      width: 520,
      height: 300,
      data: { values: rows },
      mark: { type: 'line', interpolate: 'step-after', point: { size: 18 } },
      encoding: {
        x: { field: 'latencyUs', type: 'quantitative', scale: { type: 'log' }, title: 'fault latency (µs, log scale)' },
        y: { field: 'fractionOfFaults', type: 'quantitative', title: 'fraction of faults', scale: { domain: [0, 1] } },
        color: { field: 'store', type: 'nominal', title: 'store', legend: { labelLimit: 400 } },
      },
    } as Spec,
  };
}

// ------------------------------------- bars per workload (touch cost, miss rate)

interface Point { workload: string; series: string; value: number }
/** One row per workload and series: the median of its values as `field`, and how many runs; workloads in workloadOrder. */
function seriesMedians(points: Point[], field: string): { rows: Json[]; order: string[] } {
  const groups = new Map<string, { workload: string; series: string; values: number[] }>();
  for (const p of points) {
    const k = `${p.workload}\0${p.series}`;
    const g = groups.get(k) ?? { workload: p.workload, series: p.series, values: [] };
    g.values.push(p.value);
    groups.set(k, g);
  }
  const order = workloadOrder([...groups.values()].map((g) => g.workload));
  const rows: Json[] = [...groups.values()]
    .sort((a, b) => (order.indexOf(a.workload) - order.indexOf(b.workload)) || a.series.localeCompare(b.series))
    .map((g) => ({ workload: g.workload, series: g.series, [field]: round(median(g.values), 2), runs: g.values.length }));
  return { rows, order };
}

/**
 * Bars per series in one panel per workload, each panel with its own y scale and the
 * value over each bar (costs and miss rates span orders of magnitude across workloads
 * and stores: a shared scale would flatten the small bars). rows: workload, series, `field`.
 */
function workloadPanels(rows: Json[], order: string[], field: string, yTitle: string, title: { text: string; subtitle: string | string[] }): Spec {
  return {
    $schema: SCHEMA,
    ...FONT,
    title,
    data: { values: rows },
    facet: { column: { field: 'workload', type: 'nominal', sort: order, title: 'workload, working set / local' } },
    spec: {
      width: Math.max(110, 24 * new Set(rows.map((r) => r.series)).size),  // room for each bar's value
      height: 260,
      encoding: {
        x: { field: 'series', type: 'nominal', title: null, axis: null },
        y: { field, type: 'quantitative', title: yTitle },
      },
      layer: [
        {
          mark: 'bar',
          encoding: {
            color: { field: 'series', type: 'nominal', title: null, legend: { orient: 'bottom', columns: 1, labelLimit: 400 } },
            tooltip: [{ field: 'workload' }, { field: 'series' }, { field }, { field: 'runs' }],
          },
        },
        { mark: { type: 'text', dy: -5, fontSize: 9, aria: false }, encoding: { text: { field, type: 'quantitative' } } },
      ],
    },
    resolve: { scale: { y: 'independent' } },
  } as Spec;
}

// One group per workload and size: a 1G run is not a 128M run.
const mib = (b: number) => (b >= 2 ** 30 && b % 2 ** 30 === 0 ? `${b / 2 ** 30}G` : `${Math.round(b / 2 ** 20)}M`);
const workloadOf = (p: PagerBenchResult) => `${p.workload} ${mib(p.sizeBytes)}/${mib(p.localBytes)}`;
/** Distinct workload labels in the order seq, random, zipf (then by size). */
const workloadOrder = (labels: string[]): string[] => {
  const rank = (w: string) => ['seq', 'random', 'zipf'].indexOf(w.split(' ')[0]!);
  return [...new Set(labels)].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
};

// ------------------------------------------------------------ per-touch cost (pager)

export function touchCostChart(pager: PagerBenchResult[]): Chart | null {
  const points: Point[] = [];
  const add = (workload: string, series: string, value: number) => points.push({ workload, series, value });
  for (const p of pager) {
    // pinned runs (bench pager --pin) are their own series: thread placement changes the cost
    const pin = p.pinCpu !== undefined ? ', pinned' : '';
    const priv = p.memory === 'private' ? ', private memory' : '';
    add(workloadOf(p), `pager, ${storeLabel(p.store)}, ${p.policy ?? 'refault'}${priv}${pin}`, p.usPerTouch);
    if (typeof p.kernelSwapUsPerTouch === 'number') add(workloadOf(p), `kernel swap (zram)${pin}`, p.kernelSwapUsPerTouch);
  }
  if (!points.length) return null;
  const { rows, order } = seriesMedians(points, 'usPerTouch');
  return {
    file: 'touch-cost.svg',
    title: 'µs per page touch, pager against kernel swap, per workload',
    rows,
    spec: workloadPanels(rows, order, 'usPerTouch', 'µs per touch', { text: 'Cost per page touch: pager vs kernel swap (bench pager)', subtitle: ['wall time / touches over the timed touches; median over runs; lower is better', 'one panel per workload, each with its own scale'] }),
  };
}

// ------------------------------------------------------------ miss rate (pager)

/**
 * Misses per touch, per workload: the pager under each replacement policy (bench pager
 * --policy) against the kernel's LRU, which sees hardware accessed bits. Embedded-store
 * runs only: with a slow store the pager arms dirty pages, which changes its hit rate.
 */
export function missRateChart(pager: PagerBenchResult[]): Chart | null {
  const points: Point[] = [];
  const add = (workload: string, series: string, value: number) => points.push({ workload, series, value });
  for (const p of pager) {
    if (storeLabel(p.store) !== 'memory:' || typeof p.hitRate !== 'number') continue;
    const priv = p.memory === 'private' ? ', private memory' : '';
    add(workloadOf(p), `pager, ${p.policy ?? 'refault'}${priv}`, 100 * (1 - p.hitRate));
    const k = p.kernelSwap;
    if (k && typeof k.hitRate === 'number') add(workloadOf(p), 'kernel swap (LRU, hardware accessed bits)', 100 * (1 - k.hitRate));
  }
  if (!points.length) return null;
  const { rows, order } = seriesMedians(points, 'missPercent');
  return {
    file: 'miss-rate.svg',
    title: 'Misses per touch, per replacement policy, against kernel swap',
    rows,
    spec: workloadPanels(rows, order, 'missPercent', 'misses (% of touches)', { text: 'Misses per page touch: replacement policies vs the kernel (bench pager)', subtitle: ['fetches (pager) or swap-ins (kernel) per timed touch, embedded store; median over runs; lower is better', 'one panel per workload, each with its own scale (the kernel misses every touch of a scan larger than its memory)'] }),
  };
}

// ----------------------------------------------------------------- guest slowdown (vm)

export function vmSlowdownChart(vm: VmBenchResult[]): Chart | null {
  const groups = new Map<string, { store: string; localPercent: number; values: number[]; ms: number[] }>();
  for (const r of vm) {
    for (const s of r.stores ?? []) {
      for (const p of s.phases ?? []) {
        if (!Number.isFinite(p.slowdown)) continue;
        const localPercent = Math.round(p.fraction * 100);
        const k = `${s.store}\0${localPercent}`;
        const g = groups.get(k) ?? { store: s.store, localPercent, values: [], ms: [] };
        g.values.push(p.slowdown);
        g.ms.push(p.medianMs);
        groups.set(k, g);
      }
    }
  }
  if (!groups.size) return null;
  const rows: Json[] = [...groups.values()]
    .sort((a, b) => a.store.localeCompare(b.store) || b.localPercent - a.localPercent)
    .map((g) => ({ store: g.store, localPercent: g.localPercent, slowdown: round(median(g.values), 2), passMs: round(median(g.ms), 1), runs: g.values.length }));
  const w = vm[0]!.guest.workload;
  return {
    file: 'vm-slowdown.svg',
    title: 'Guest slowdown against local memory fraction, per store',
    rows,
    spec: {
      $schema: SCHEMA,
      ...FONT,
      title: { text: 'Guest slowdown vs local memory (bench vm)', subtitle: [`test guest ${vm[0]!.guest.memMiB} MiB, workload ${w.sizeMiB} MiB ${w.pattern} write=${w.write}`, 'pass time / unattached pass time just before (paired baseline), medians'] },
      width: 480,
      height: 300,
      layer: [
        {
          data: { values: rows },
          mark: { type: 'line', point: { size: 60, filled: true } },
          encoding: {
            x: { field: 'localPercent', type: 'quantitative', title: 'local memory (% of the guest footprint)', scale: { domain: [100, 0] }, axis: { values: [100, 75, 50, 25, 0] } },
            y: { field: 'slowdown', type: 'quantitative', title: 'slowdown (× unattached pass time)', scale: { type: 'log' } },
            color: { field: 'store', type: 'nominal', title: 'store' },
            tooltip: [{ field: 'store' }, { field: 'localPercent' }, { field: 'slowdown' }, { field: 'passMs' }, { field: 'runs' }],
          },
        },
        {
          data: { values: [{ unattached: 1 }] },
          mark: { type: 'rule', strokeDash: [4, 4], color: '#888' },
          encoding: { y: { field: 'unattached', type: 'quantitative' } },
        },
      ],
    } as Spec,
  };
}

// -------------------------------------------------------------- store latency (store)

export function storeLatencyChart(store: StoreBenchResult[]): Chart | null {
  const groups = new Map<string, { store: string; batch: number; op: string; values: number[] }>();
  for (const s of store) {
    for (const [b, r] of Object.entries(s.batches ?? {})) {
      const batch = Number(b);
      for (const [op, us] of [['put', r.putP50Us], ['get', r.getP50Us]] as const) {
        if (!Number.isFinite(us) || !batch) continue;
        const k = `${storeLabel(s.store)}\0${batch}\0${op}`;
        const g = groups.get(k) ?? { store: storeLabel(s.store), batch, op, values: [] };
        g.values.push(us / batch);
        groups.set(k, g);
      }
    }
  }
  if (!groups.size) return null;
  const rows: Json[] = [...groups.values()]
    .sort((a, b) => a.store.localeCompare(b.store) || a.batch - b.batch || a.op.localeCompare(b.op))
    .map((g) => ({ store: g.store, batch: g.batch, op: g.op, usPerPage: round(median(g.values), 2), runs: g.values.length }));
  return {
    file: 'store-latency.svg',
    title: 'Store latency per 4 KiB page by batch size, put and get',
    rows,
    spec: {
      $schema: SCHEMA,
      ...FONT,
      title: { text: 'Page store cost per 4 KiB page (bench store)', subtitle: 'p50 latency of one batch call / pages in the batch; one batch in flight' },
      data: { values: rows },
      facet: { column: { field: 'op', type: 'nominal', title: null, sort: ['put', 'get'] } },
      spec: {
        width: 220,
        height: 260,
        mark: { type: 'line', point: { size: 50, filled: true } },
        encoding: {
          x: { field: 'batch', type: 'quantitative', title: 'pages per batch (log scale)', scale: { type: 'log', domain: [1, 256] }, axis: { values: [1, 4, 16, 64, 256] } },
          y: { field: 'usPerPage', type: 'quantitative', title: 'µs per page (log scale)', scale: { type: 'log' } },
          color: { field: 'store', type: 'nominal', title: 'store', legend: { labelLimit: 400 } },
          tooltip: [{ field: 'store' }, { field: 'op' }, { field: 'batch' }, { field: 'usPerPage' }, { field: 'runs' }],
        },
      },
    } as Spec,
  };
}

// -------------------------------------------------------------- derived figures

/**
 * Wall time per page fault, the figure FluidMem reports ("average page fault latency"
 * seen by pmbench): the timed touches' total time divided by the touches that faulted.
 * Pager: usPerTouch x touches / pager faults (missing and write-protect faults);
 * kernel swap: usPerTouch x touches / touches slower than 2 µs (the workload's own
 * count). Both include the resident touches' ~0.1 µs, a small over-estimate.
 */
export interface PerFaultRow {
  workload: string;
  store: string;
  policy: string;
  sizeMiB: number;
  localMiB: number;
  localPercent: number;
  pagerUsPerFault: number;
  pagerFaultP50Us: number;
  pagerTouchFaultP50Us: number;
  kernelUsPerFault: number | null;
  kernelTouchFaultP50Us: number | null;
  pagerOverKernel: number | null;
}

export function perFaultRows(pager: PagerBenchResult[]): PerFaultRow[] {
  return pager.filter((p) => p.pager?.faults > 0).map((p) => {
    const totalUs = p.usPerTouch * p.touches;
    const k = p.kernelSwap;
    const kernelUs = k && k.slowTouches > 0 ? round(k.usPerTouch * p.touches / k.slowTouches, 2) : null;
    // Both sides per touch that faulted, as the workload times them (over 2 µs); results
    // saved before slowTouches was recorded fall back to the pager's own fault count.
    const pagerUs = round(totalUs / (p.slowTouches && p.slowTouches > 0 ? p.slowTouches : p.pager.faults), 2);
    return {
      workload: p.workload,
      store: storeLabel(p.store),
      policy: p.policy ?? 'refault',
      sizeMiB: p.sizeBytes / 2 ** 20,
      localMiB: p.localBytes / 2 ** 20,
      localPercent: Math.round((100 * p.localBytes) / p.sizeBytes),
      pagerUsPerFault: pagerUs,
      pagerFaultP50Us: p.faultLatencyUs.p50,
      pagerTouchFaultP50Us: p.touchFaultUs.p50,
      kernelUsPerFault: kernelUs,
      kernelTouchFaultP50Us: k ? k.touchFaultUs.p50 : null,
      pagerOverKernel: kernelUs ? round(pagerUs / kernelUs, 2) : null,
    };
  });
}

export function perFaultTable(rows: PerFaultRow[]): string {
  const head = `${'workload'.padEnd(8)} ${'store'.padEnd(10)} ${'size'.padStart(6)} ${'local'.padStart(6)} ${'pager µs/fault'.padStart(14)} ${'p50 pager'.padStart(9)} ${'p50 touch'.padStart(9)} ${'kernel µs/fault'.padStart(15)} ${'p50 touch'.padStart(9)} ${'ratio'.padStart(6)}`;
  const f = (x: number | null) => (x === null ? '-' : String(x));
  return [head, ...rows.map((r) => [
    r.workload.padEnd(8), r.store.padEnd(10), `${r.sizeMiB}M`.padStart(6), `${r.localMiB}M`.padStart(6),
    f(r.pagerUsPerFault).padStart(14), f(r.pagerFaultP50Us).padStart(9), f(r.pagerTouchFaultP50Us).padStart(9),
    f(r.kernelUsPerFault).padStart(15), f(r.kernelTouchFaultP50Us).padStart(9), f(r.pagerOverKernel).padStart(6),
  ].join(' '))].join('\n') + '\n';
}

// ------------------------------------------------------------------------ rendering

/** vega-lite -> vega -> SVG, headless (renderer 'none': no canvas, no DOM). */
export async function renderSvg(spec: Spec): Promise<string> {
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

export function chartsOf(r: Results): Chart[] {
  return [faultLatencyChart(r.pager), touchCostChart(r.pager), missRateChart(r.pager), vmSlowdownChart(r.vm), storeLatencyChart(r.store)].filter((c): c is Chart => c !== null);
}

export interface WrittenChart { file: string; title: string; marks: number }

/** Read every result in `fromDir`, write every chart the results allow into `outDir`. */
export async function generateCharts(fromDir: string, outDir: string): Promise<{ written: WrittenChart[]; results: Results; missing: string[] }> {
  const results = loadResults(fromDir);
  const charts = chartsOf(results);
  const missing: string[] = [];
  if (!results.pager.length) missing.push('fault-latency.svg, touch-cost.svg and miss-rate.svg need bench pager results (elasticmem bench pager ... --json)');
  if (!results.vm.length) missing.push('vm-slowdown.svg needs a bench vm result (elasticmem bench vm --json)');
  if (!results.store.length) missing.push('store-latency.svg needs bench store results (elasticmem bench store --store URI --json)');
  if (!charts.length) throw new ElasticmemError(`no bench results in ${fromDir}: ${missing.join('; ')}`, 'NO_RESULTS');
  fs.mkdirSync(outDir, { recursive: true });
  const written: WrittenChart[] = [];
  for (const c of charts) {
    const svg = await renderSvg(c.spec);
    const file = path.join(outDir, c.file);
    fs.writeFileSync(file + '.tmp', svg + '\n');
    fs.renameSync(file + '.tmp', file);
    written.push({ file, title: c.title, marks: c.rows.length });
  }
  return { written, results, missing };
}
