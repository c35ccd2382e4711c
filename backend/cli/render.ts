/** Terminal rendering for the CLI: progress bars and the `stats --watch` view. */
import type { StatsSample } from '../stats/stream.ts';
import { formatSize, PAGE } from '../size.ts';

export function progressBar(done: number, total: number, width: number): string {
  const f = total > 0 ? Math.min(1, done / total) : 1;
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}]`;
}

const fmtRate = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(1)}k` : x.toFixed(0)).padStart(7);

/** One full screen of the live view (ANSI: home + clear). */
export function renderWatch(s: StatsSample): string {
  const st = s.stats;
  const cap = st.localCapPages;
  const res = st.residentPages;
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
    `totals   faults ${st.faults}  fetches ${st.fetches}  evictions ${st.evictions}  clean drops ${st.cleanDrops}  store writes ${st.storeWrites}  prefetched ${st.prefetched}  zero fills ${st.zeroFills}`,
  ];
  return '\x1b[H\x1b[2J' + lines.join('\n') + '\n';
}

/** The same sample as one line, for a non-terminal stdout (logs, pipes). */
export function renderWatchLine(s: StatsSample): string {
  const st = s.stats;
  return `${new Date(s.t).toISOString()} ${st.name} resident=${st.residentPages}/${st.localCapPages} remote=${st.remotePages} faults/s=${s.rates.faults.toFixed(0)} fetches/s=${s.rates.fetches.toFixed(0)} evictions/s=${s.rates.evictions.toFixed(0)} p50=${st.faultLatencyUs.p50}us p99=${st.faultLatencyUs.p99}us store=${st.storeState}\n`;
}
