/**
 * The benchmark charts: drawn from sample JSON (real outputs of bench vm, bench pager
 * and bench store on the project machine, in test/fixtures/bench), every chart file
 * is produced, and every data point of the input is in the SVG (vega-lite labels
 * each mark with its values). A changed input changes the chart.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateCharts, loadResults, kindOf, storeLabel, perFaultRows } from '../backend/bench/charts.ts';
import { runCli } from './helpers/daemon.ts';
import { REPO_ROOT } from './helpers/guest.ts';

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures', 'bench');
const readJson = (f: string) => JSON.parse(fs.readFileSync(path.join(FIXTURES, f), 'utf8'));

function tmp(t: { teardown(fn: () => void): void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'em-charts-'));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** The aria-labels of the data marks of an SVG (axis, legend and title labels excluded). */
function markLabels(svg: string): string[] {
  return [...svg.matchAll(/aria-label="([^"]*)"/g)].map((m) => m[1]!.replace(/&amp;/g, '&')).filter((l) => !/^(X-axis|Y-axis|Symbol legend|Title text|Gradient legend)/.test(l));
}

test('every chart is drawn from the sample results and carries every data point', async (t) => {
  const out = tmp(t);
  const { written, results, missing } = await generateCharts(FIXTURES, out);
  t.deepEqual(missing, []);
  t.is(results.vm.length, 1);
  t.is(results.pager.length, 1);
  t.is(results.store.length, 1);
  t.deepEqual(written.map((w) => path.basename(w.file)).sort(), ['fault-latency.svg', 'miss-rate.svg', 'store-latency.svg', 'touch-cost.svg', 'vm-slowdown.svg']);
  for (const w of written) {
    const svg = fs.readFileSync(w.file, 'utf8');
    t.true(svg.startsWith('<svg'), `${w.file} is an SVG`);
    t.true(svg.length > 2000, `${w.file} has content`);
  }
  const svgOf = (f: string) => fs.readFileSync(path.join(out, f), 'utf8');

  // Guest slowdown: one point per store and fraction, with the slowdown of the JSON.
  const vm = readJson('vm.json');
  const vmLabels = markLabels(svgOf('vm-slowdown.svg'));
  let points = 0;
  for (const s of vm.stores) {
    for (const p of s.phases) {
      points++;
      const want = `local memory (% of the guest footprint): ${Math.round(p.fraction * 100)}; slowdown (× unattached pass time): ${Math.round(p.slowdown * 100) / 100}; store: ${s.store};`;
      t.true(vmLabels.some((l) => l.startsWith(want)), `vm-slowdown.svg has ${want}`);
    }
  }
  t.true(points >= 6);

  // Per-touch cost: the pager's and the kernel's µs per touch for the workload.
  const pager = readJson('pager-random.json');
  const touch = markLabels(svgOf('touch-cost.svg'));
  const r2 = (x: number) => Math.round(x * 100) / 100;
  const wl = `${pager.workload} ${pager.sizeBytes >> 20}M/${pager.localBytes >> 20}M`;
  t.true(touch.some((l) => l.startsWith(`series: pager, memory:, slru; µs per touch: ${r2(pager.usPerTouch)}; workload: ${wl};`)), touch.join('\n'));
  t.true(touch.some((l) => l.startsWith(`series: kernel swap (zram); µs per touch: ${r2(pager.kernelSwapUsPerTouch)}; workload: ${wl};`)), touch.join('\n'));
  t.is(touch.filter((l) => l.startsWith('series:')).length, 2);

  // Miss rate: the pager's misses per touch under its policy, and the kernel's.
  const miss = markLabels(svgOf('miss-rate.svg')).filter((l) => l.startsWith('series:'));
  t.true(miss.some((l) => l.startsWith(`series: pager, slru; misses (% of touches): ${r2(100 * (1 - pager.hitRate))}; workload: ${wl};`)), miss.join('\n'));
  t.true(miss.some((l) => l.startsWith(`series: kernel swap (LRU, hardware accessed bits); misses (% of touches): ${r2(100 * (1 - pager.kernelSwap.hitRate))}; workload: ${wl};`)), miss.join('\n'));
  t.is(miss.length, 2);

  // Fault latency: a step per non-empty histogram bucket, ending at all faults.
  const h = pager.pager.latencyHistogram as { boundsUs: number[]; counts: number[] };
  const total = h.counts.reduce((a, b) => a + b, 0);
  const lat = markLabels(svgOf('fault-latency.svg')).filter((l) => l.startsWith('fault latency'));
  const nonEmpty = h.counts.filter((c) => c > 0).length;
  // One point per bucket (the line itself is labelled with its first point: same label).
  t.is(new Set(lat).size, nonEmpty, `${lat.length} marks for ${nonEmpty} buckets`);
  const last = h.boundsUs[h.counts.map((c, i) => (c > 0 ? i : -1)).filter((i) => i >= 0).pop()!]!;
  t.true(lat.some((l) => l.startsWith(`fault latency (µs, log scale): ${last}; fraction of faults: 1; store: memory: (${total} faults)`)), `last step at ${last} µs reaches 1`);

  // Store latency: p50 of a batch call / batch size, for put and get at every batch size.
  const store = readJson('store-memory.json');
  const sl = markLabels(svgOf('store-latency.svg'));
  for (const [b, r] of Object.entries(store.batches as Record<string, { putP50Us: number; getP50Us: number }>)) {
    for (const [op, us] of [['put', r.putP50Us], ['get', r.getP50Us]] as const) {
      const v = r2(us / Number(b));
      t.true(sl.some((l) => l.includes(`pages per batch (log scale): ${b};`) && l.includes(`µs per page (log scale): ${v};`) && l.includes(`op: ${op}`)), `store-latency.svg has ${op} batch ${b} = ${v} µs/page`);
    }
  }
});

test('a changed result changes the chart (the SVG follows the data, nothing is fixed)', async (t) => {
  const from = tmp(t);
  const out = tmp(t);
  const vm = readJson('vm.json');
  vm.stores[0].phases[2].slowdown = 42.5;
  vm.stores[0].store = 'renamed-store';
  fs.writeFileSync(path.join(from, 'vm.json'), JSON.stringify(vm));
  const { written, missing } = await generateCharts(from, out);
  t.deepEqual(written.map((w) => path.basename(w.file)), ['vm-slowdown.svg']);
  t.is(missing.length, 2, 'says which charts it could not draw and why');
  const labels = markLabels(fs.readFileSync(path.join(out, 'vm-slowdown.svg'), 'utf8'));
  t.true(labels.some((l) => l.includes('slowdown (× unattached pass time): 42.5; store: renamed-store;')));
  t.false(labels.some((l) => l.includes('store: memory:;')));
});

test('results are found by content: NDJSON, arrays, other files ignored', (t) => {
  const from = tmp(t);
  const pager = readJson('pager-random.json');
  fs.writeFileSync(path.join(from, 'runs.json'), [JSON.stringify(pager), JSON.stringify({ ...pager, workload: 'zipf' })].join('\n') + '\n');
  fs.writeFileSync(path.join(from, 'stores.json'), JSON.stringify([readJson('store-memory.json')]));
  fs.writeFileSync(path.join(from, 'other.json'), JSON.stringify({ hello: 1 }));
  fs.writeFileSync(path.join(from, 'notes.txt'), 'not json');
  const r = loadResults(from);
  t.is(r.pager.length, 2);
  t.is(r.store.length, 1);
  t.is(r.vm.length, 0);
  t.deepEqual(r.ignored.map((i) => path.basename(i.file)), ['other.json']);
  t.is(kindOf(readJson('vm.json')), 'vm');
  t.is(kindOf({ foo: 1 }), null);
  t.is(storeLabel('redis://127.0.0.1:6379'), 'redis');
  t.is(storeLabel('file:///var/lib/em'), 'file');
  t.is(storeLabel('redis+cluster://a:1,b:2'), 'redis-cluster');
});

test('bench charts through the real CLI; bad folders are refused with the fix', async (t) => {
  const out = tmp(t);
  const r = await runCli(['bench', 'charts', '--from', FIXTURES, '--out', out, '--json']);
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.is(j.written.length, 5);
  t.true(j.written.every((w: { file: string }) => fs.existsSync(w.file)));

  const empty = tmp(t);
  const e = await runCli(['bench', 'charts', '--from', empty, '--out', path.join(empty, 'charts')]);
  t.is(e.code, 1);
  t.regex(e.stderr, /no bench results in .*bench vm --json/);
  t.false(fs.existsSync(path.join(empty, 'charts')), 'nothing written');

  // (a --from that names no folder is a wrong option value: exit 2, as for any bad input)
  const none = await runCli(['bench', 'charts', '--from', '/nonexistent/results']);
  t.is(none.code, 2);
  t.regex(none.stderr, /no such folder; save results first/);
});

test('wall time per page fault: total touch time over faulting touches, pager and kernel', (t) => {
  const p = readJson('pager-random.json');
  const [row] = perFaultRows([p]);
  t.is(row!.store, 'memory:');
  t.is(row!.localPercent, Math.round((100 * p.localBytes) / p.sizeBytes));
  // (a result saved without slowTouches: the pager's own fault count)
  t.is(p.slowTouches, undefined);
  t.is(row!.pagerUsPerFault, Math.round((p.usPerTouch * p.touches / p.pager.faults) * 100) / 100);
  // With slowTouches, both sides divide by the touches that faulted, as the workload times them.
  const [same] = perFaultRows([{ ...p, slowTouches: 1000 }]);
  t.is(same!.pagerUsPerFault, Math.round((p.usPerTouch * p.touches / 1000) * 100) / 100);
  t.is(row!.kernelUsPerFault, Math.round((p.kernelSwap.usPerTouch * p.touches / p.kernelSwap.slowTouches) * 100) / 100);
  t.is(row!.pagerOverKernel, Math.round((row!.pagerUsPerFault / row!.kernelUsPerFault!) * 100) / 100);
  // Without a kernel-swap baseline the kernel columns are empty, not invented.
  const { kernelSwap: _k, kernelSwapUsPerTouch: _u, ...noKernel } = p;
  const [r2] = perFaultRows([noKernel]);
  t.is(r2!.kernelUsPerFault, null);
  t.is(r2!.pagerOverKernel, null);
});

test('pinned pager runs (bench pager --pin) are their own series, next to unpinned ones', async (t) => {
  const from = tmp(t);
  const out = tmp(t);
  const unpinned = readJson('pager-random.json');
  const pinned = { ...unpinned, pinCpu: 0, usPerTouch: 3.21, kernelSwapUsPerTouch: 4.56 };
  fs.writeFileSync(path.join(from, 'runs.json'), [unpinned, pinned].map((r) => JSON.stringify(r)).join('\n'));
  await generateCharts(from, out);
  const touch = markLabels(fs.readFileSync(path.join(out, 'touch-cost.svg'), 'utf8')).filter((l) => l.startsWith('series:'));
  t.is(touch.length, 4, touch.join('\n'));
  t.true(touch.some((l) => l.includes('series: pager, memory:, slru, pinned; µs per touch: 3.21;')), touch.join('\n'));
  t.true(touch.some((l) => l.includes('series: kernel swap (zram), pinned; µs per touch: 4.56;')), touch.join('\n'));
  t.true(touch.some((l) => l.includes(`series: pager, memory:, slru; µs per touch: ${Math.round(unpinned.usPerTouch * 100) / 100};`)), touch.join('\n'));
});

test('private-memory pager runs (bench pager --memory private) are their own series and latency curve', async (t) => {
  const from = tmp(t);
  const out = tmp(t);
  const shared = readJson('pager-random.json');
  const priv = { ...shared, memory: 'private', usPerTouch: 6.54 };
  fs.writeFileSync(path.join(from, 'runs.json'), [shared, priv].map((r) => JSON.stringify(r)).join('\n'));
  await generateCharts(from, out);
  const touch = markLabels(fs.readFileSync(path.join(out, 'touch-cost.svg'), 'utf8')).filter((l) => l.startsWith('series:'));
  t.true(touch.some((l) => l.includes('series: pager, memory:, slru, private memory; µs per touch: 6.54;')), touch.join('\n'));
  t.true(touch.some((l) => l.includes(`series: pager, memory:, slru; µs per touch: ${Math.round(shared.usPerTouch * 100) / 100};`)), touch.join('\n'));
  const latency = fs.readFileSync(path.join(out, 'fault-latency.svg'), 'utf8');
  t.true(latency.includes('memory:, private memory'), 'a curve of its own');
});
