/** Terminal rendering for the CLI: progress bars and the `stats --watch` view (with sparklines). */
import type { StatsSample } from '../stats/stream.ts';
import { formatSize, PAGE } from '../size.ts';

export function progressBar(done: number, total: number, width: number): string {
  const f = total > 0 ? Math.min(1, done / total) : 1;
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}]`;
}

const fmtRate = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0)).padStart(7);

const SPARK = '▁▂▃▄▅▆▇█';

/**
 * Values as a one-line chart, each a block scaled to the largest (a blank for nothing,
 * the lowest block for anything above nothing, so a trickle stays visible).
 */
export function sparkline(values: number[]): string {
  const max = Math.max(0, ...values);
  // (v > 0 implies max >= v: the index is 0 to length - 1)
  return values.map((v) => (v <= 0 ? ' ' : SPARK[Math.min(SPARK.length, Math.ceil((v / max) * SPARK.length)) - 1]!)).join('');
}

/**
 * The `stats --watch` screen. Keeps the last `span` samples' rates, drawn as sparklines
 * (faults, evictions and store writes per second over the last minute): a burst or a
 * stall is seen at a glance, not read off numbers that change every second.
 */
export class WatchView {
  private readonly history: { faults: number[]; evictions: number[]; storeWrites: number[] } = { faults: [], evictions: [], storeWrites: [] };
  constructor(private readonly span = 60) {}

  /** One full screen for this sample (ANSI: home + clear). */
  render(s: StatsSample): string {
    for (const k of ['faults', 'evictions', 'storeWrites'] as const) {
      const h = this.history[k];
      h.push(Math.max(0, s.rates[k]));
      if (h.length > this.span) h.shift();
    }
    const st = s.stats;
    const cap = st.localCapPages;
    const res = st.residentPages;
    const trend = (label: string, h: number[]) => `${label.padEnd(14)} ${sparkline(h).padEnd(this.span)}  now ${fmtRate(h[h.length - 1] ?? 0)}  max ${fmtRate(Math.max(0, ...h))}`;
    const lines = [
      `elasticmem stats ${st.name}   ${new Date(s.t).toLocaleTimeString()}   (Ctrl-C to quit)`,
      '',
      `store     ${st.store}   ${st.storeState === 'ok' ? 'ok' : `${st.storeState.toUpperCase()}: ${st.storeError}`}`,
      `resident  ${progressBar(res, cap, 40)} ${formatSize(res * PAGE)} / cap ${formatSize(cap * PAGE)}`,
      `remote    ${formatSize(st.remotePages * PAGE)} (${st.remotePages} pages)   total ${formatSize(st.totalPages * PAGE)}`,
      '',
      `per second   faults ${fmtRate(s.rates.faults)}   fetches ${fmtRate(s.rates.fetches)}   evictions ${fmtRate(s.rates.evictions)}   store writes ${fmtRate(s.rates.storeWrites)}   zero fills ${fmtRate(s.rates.zeroFills)}`,
      `fault latency  p50 ${st.faultLatencyUs.p50} us   p99 ${st.faultLatencyUs.p99} us`,
      '',
      `last ${this.span} s, per second:`,
      trend('faults', this.history.faults),
      trend('evictions', this.history.evictions),
      trend('store writes', this.history.storeWrites),
      '',
      `totals   faults ${st.faults}  fetches ${st.fetches}  evictions ${st.evictions}  clean drops ${st.cleanDrops}  store writes ${st.storeWrites}  prefetched ${st.prefetched}  zero fills ${st.zeroFills}`,
    ];
    return '\x1b[H\x1b[2J' + lines.join('\n') + '\n';
  }
}

/** The same sample as one line, for a non-terminal stdout (logs, pipes). */
export function renderWatchLine(s: StatsSample): string {
  const st = s.stats;
  return `${new Date(s.t).toISOString()} ${st.name} resident=${st.residentPages}/${st.localCapPages} remote=${st.remotePages} faults/s=${s.rates.faults.toFixed(0)} fetches/s=${s.rates.fetches.toFixed(0)} evictions/s=${s.rates.evictions.toFixed(0)} p50=${st.faultLatencyUs.p50}us p99=${st.faultLatencyUs.p99}us store=${st.storeState}\n`;
}
