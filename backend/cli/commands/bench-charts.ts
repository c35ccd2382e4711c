/** `elasticmem bench charts`: regenerate every chart (SVG) from saved bench --json results. */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse, printJson, UsageError, type Command } from '../command.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

const usage = `usage: elasticmem bench charts [--from DIR] [--out DIR] [--json]

Draws the benchmark charts as SVG from results saved with --json (vega-lite, rendered
here without a browser or network). Files are recognised by content, one JSON object
per file or one per line:

  fault-latency.svg   pager fault latency, cumulative, per store    (bench pager)
  touch-cost.svg      µs per touch, pager vs kernel swap, per workload (bench pager)
  miss-rate.svg       misses per touch, per replacement policy and kernel (bench pager)
  vm-slowdown.svg     guest slowdown against local memory, per store (bench vm)
  store-latency.svg   µs per page by batch size, put and get          (bench store)

  --from DIR   folder of *.json results (default docs/results of this checkout)
  --out DIR    where the SVGs go (default docs/charts of this checkout)
  --json       print what was written as one JSON object

It also prints, from the bench pager results, the wall time per page fault of the
pager and of kernel swap (total time of the timed touches / touches that faulted):
the figure FluidMem reports as average page fault latency.

examples:
  elasticmem bench vm --json > docs/results/vm.json
  elasticmem bench charts
  elasticmem bench charts --from /tmp/results --out /tmp/charts
`;

const cmd: Command = {
  name: 'bench charts',
  summary: 'draw the benchmark charts (SVG) from saved --json results',
  usage,
  async run(args) {
    const { values, help } = parse('bench charts', args, { from: { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' } }, { min: 0, max: 0, names: '' });
    if (help) { process.stdout.write(usage); return 0; }
    const from = path.resolve(values.from ?? path.join(REPO, 'docs', 'results'));
    const out = path.resolve(values.out ?? path.join(REPO, 'docs', 'charts'));
    // Before any drawing: a file in the way would only fail at the first write.
    if (fs.existsSync(out) && !fs.statSync(out).isDirectory()) throw new UsageError(`bench charts: --out ${out} is a file, not a folder; give a folder (it is created if missing)`);
    // Loaded here: vega is big and only this command needs it.
    const { generateCharts, perFaultRows, perFaultTable } = await import('../../bench/charts.ts');
    const { written, results, missing } = await generateCharts(from, out);
    const perFault = perFaultRows(results.pager);
    if (values.json) {
      printJson({ from, out, written, inputs: results.sources, ignored: results.ignored, missing, perFault });
      return 0;
    }
    process.stdout.write(`read ${results.sources.length} results from ${from} (${results.vm.length} vm, ${results.pager.length} pager, ${results.store.length} store)\n`);
    for (const w of written) process.stdout.write(`  wrote ${path.relative(process.cwd(), w.file) || w.file}  ${w.title} (${w.marks} data points)\n`);
    for (const i of results.ignored) process.stdout.write(`  ignored ${i.file}: ${i.why}\n`);
    for (const m of missing) process.stdout.write(`  not drawn: ${m}\n`);
    if (perFault.length) {
      process.stdout.write('\nwall time per page fault (bench pager): timed touches x µs per touch / faulting touches\n');
      process.stdout.write(perFaultTable(perFault));
    }
    return 0;
  },
};
export default cmd;
