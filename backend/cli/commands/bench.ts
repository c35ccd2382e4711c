import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { EXIT_USAGE, UsageError, tagCommand, type Command } from '../command.ts';
import { ElasticmemError } from '../../../native/errors.ts';

const SUBS: Record<string, { file: string; summary: string }> = {
  store: { file: './bench-store.ts', summary: 'page-store latency and throughput per batch size' },
  pager: { file: './bench-pager.ts', summary: 'per-touch cost of the pager against kernel swap' },
  vm: { file: './bench-vm.ts', summary: 'the test guest at 100%, 50%, 25% local memory per store' },
  charts: { file: './bench-charts.ts', summary: 'draw the charts (SVG) from saved --json results' },
};

const usage = `usage: elasticmem bench <store|pager|vm|charts> [options]

  elasticmem bench store --store URI [--store-key FILE] [--tls-ca FILE] [--compress] [--seconds N] [--json]
  elasticmem bench pager --workload seq|random|zipf --size SIZE --local SIZE --store URI [--baseline kernel-swap] [--json]
  elasticmem bench vm [--stores LIST] [--size-mib N] [--json]
  elasticmem bench charts [--from DIR] [--out DIR]

${Object.entries(SUBS).map(([k, v]) => `  ${k.padEnd(6)} ${v.summary}`).join('\n')}

Each has its own help: elasticmem bench store --help
`;

const cmd: Command = {
  name: 'bench',
  summary: 'benchmarks: bench store | pager | vm | charts',
  usage,
  async run(args) {
    const [sub, ...rest] = args;
    if (!sub || sub === '--help' || sub === '-h') { (sub ? process.stdout : process.stderr).write(usage); return sub ? 0 : EXIT_USAGE; }
    const s = SUBS[sub];
    if (!s) {
      throw new UsageError(sub.startsWith('-')
        ? `bench: '${sub}' comes before the benchmark: name it first, e.g. elasticmem bench store ${sub} ...`
        : `bench: unknown benchmark '${sub}'; choose store, pager or vm, or charts to draw their results`);
    }
    const url = new URL(s.file, import.meta.url);
    if (!fs.existsSync(fileURLToPath(url))) {
      throw new ElasticmemError(`'bench ${sub}' is not available yet in this build (${fileURLToPath(url).replace(/^.*\/backend\//, 'backend/')} does not exist)`, 'NOT_AVAILABLE');
    }
    const mod = (await import(url.href)) as { default?: Command };
    if (!mod.default || typeof mod.default.run !== 'function') throw new ElasticmemError(`'bench ${sub}' has no command in ${s.file}`, 'NOT_AVAILABLE');
    // Errors point to this sub-command's help, not bench's.
    try {
      return await mod.default.run(rest);
    } catch (e) {
      throw tagCommand(e, `bench ${sub}`);
    }
  },
};
export default cmd;
