/**
 * `elasticmem bench store --store URI [--json]`: routed here by commands/bench.ts. Runs
 * locally against the store (no daemon): page put/get latency and throughput at batch
 * sizes 1, 16 and 256, with a raw baseline from the same run where one exists.
 */
import { parse, printJson, UsageError, type Command } from '../command.ts';
import { progressBar } from '../render.ts';
import { runStoreBench, BATCH_SIZES, type StoreBenchResult } from '../../bench/store-bench.ts';
import { checkStoreOptions } from '../store-options.ts';

const usage = `usage: elasticmem bench store --store URI [--json] [--store-key FILE] [--tls-ca FILE] [--compress] [--seconds S]

Measure a page store the way the pager uses it: one batch in flight, 4 KiB random pages.
Per batch size (1, 16, 256): put and get latency of one batch call (p50, p99, in µs) and
throughput (pages/s). For redis:// and redis+cluster:// the same run measures
redis-benchmark (-d 4096 -c 1 -P <batch>) as the raw baseline; for memcached:// plain
values over the bare protocol; overheadVsRaw is the adapter's time per page over the
raw time per page at batch 16. The benchmark writes under its own VM id and removes it.

  --store URI        memory:, file:///path, redis://host:port[/db], redis+cluster://h1:p1,h2:p2,
                     memcached://h1:p1[,h2:p2], aerospike://h1:p1[,h2:p2]/namespace[/set]
  --store-key FILE   AES-256-GCM key file: measure with encryption at rest
  --tls-ca FILE      PEM CA certificate(s) to trust for rediss:// (a private CA)
  --compress         measure with page compression on
  --seconds S        time per measured phase of one round (default 0.1; 10 rounds)
  --json             one JSON object on stdout

examples:
  elasticmem bench store --store redis://127.0.0.1:6379
  elasticmem bench store --store memcached://10.0.0.1:11211,10.0.0.2:11211 --json
`;

const OPTIONS = {
  store: { type: 'string' },
  json: { type: 'boolean' },
  'store-key': { type: 'string' },
  'tls-ca': { type: 'string' },
  compress: { type: 'boolean' },
  seconds: { type: 'string' },
} as const;

export function renderTable(r: StoreBenchResult): string {
  const lines = [`store ${r.store}   (one batch in flight, 4 KiB pages${r.settings.envelope ? ', enveloped' : ''})`, ''];
  lines.push('batch   put p50 µs   put p99 µs   get p50 µs   get p99 µs   put pages/s   get pages/s   raw set/s   raw get/s');
  for (const b of BATCH_SIZES) {
    const x = r.batches[String(b)]!;
    const raw = r.raw?.batches[String(b)];
    lines.push([
      String(b).padStart(5),
      x.putP50Us.toFixed(1).padStart(12), x.putP99Us.toFixed(1).padStart(12),
      x.getP50Us.toFixed(1).padStart(12), x.getP99Us.toFixed(1).padStart(12),
      String(x.putPagesPerSec).padStart(13), String(x.getPagesPerSec).padStart(13),
      (raw ? String(raw.setPagesPerSec) : '-').padStart(11), (raw ? String(raw.getPagesPerSec) : '-').padStart(11),
    ].join(' '));
  }
  lines.push('');
  if (r.raw) {
    lines.push(`raw baseline: ${r.raw.tool}`);
    lines.push(`overheadVsRaw (batch 16): ${r.overheadVsRaw}   (put ${r.overheadVsRawPut}, get ${r.overheadVsRawGet})`);
  } else {
    lines.push('raw baseline: none for this store');
  }
  return lines.join('\n') + '\n';
}

const cmd: Command = {
  name: 'bench-store',
  summary: 'page-store latency and throughput per batch size, against a raw baseline',
  usage,
  async run(args) {
    const { values, help } = parse('bench store', args, OPTIONS, { min: 0, max: 0, names: '' });
    if (help) { process.stdout.write(usage); return 0; }
    if (!values.store) throw new UsageError('bench store: --store URI is required, e.g. --store redis://127.0.0.1:6379');
    // The same refusals as attach, before connecting: a key or CA the store cannot use
    // would be measured as silently ignored, an unreadable one would fail only later.
    await checkStoreOptions({ store: values.store, keyFile: values['store-key'], tlsCaFile: values['tls-ca'] }, 'bench store: ');
    let seconds: number | undefined;
    if (values.seconds !== undefined) {
      seconds = Number(values.seconds);
      if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 60) throw new UsageError(`bench store: --seconds must be a number in (0, 60], got '${values.seconds}'`);
    }
    const tty = !values.json && process.stderr.isTTY;
    const result = await runStoreBench({
      uri: values.store,
      json: !!values.json,
      keyFile: values['store-key'],
      tlsCaFile: values['tls-ca'],
      compress: !!values.compress,
      secondsPerPhase: seconds,
      onProgress: tty ? (p) => process.stderr.write(`\r${progressBar(p.done, p.total, 30)} ${p.label.padEnd(24)}`) : undefined,
    });
    if (tty) process.stderr.write('\r\x1b[K');
    if (values.json) printJson(result);
    else process.stdout.write(renderTable(result));
    return 0;
  },
};
export default cmd;
