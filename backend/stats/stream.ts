/**
 * Live statistics as rxjs streams: one sample of the native counters per interval,
 * paired with the previous one to give rates per second. The daemon streams these to
 * `stats --watch`; the terminal view only renders them.
 */
import { Observable, interval, map, pairwise, startWith, share } from 'rxjs';
import type { PagerStatsRaw } from '../../native/index.ts';

/**
 * The public stats object, as `stats --json` prints it: the native counters under their
 * DESIGN.md names (faults, zeroFills, fetches, ..., faultLatencyUs {p50, p99},
 * storeState, storeError) without the raw histogram, plus which VM and store they are of.
 */
export type PublicStats = Omit<PagerStatsRaw, 'latencyHistogram'> & { vm: string; name: string; store: string; state: string };

export interface StatsSample {
  t: number;
  stats: PublicStats;
  /** Per-second rates since the previous sample. */
  rates: { faults: number; fetches: number; evictions: number; storeWrites: number; zeroFills: number; prefetched: number };
}

export const RATE_KEYS = ['faults', 'fetches', 'evictions', 'storeWrites', 'zeroFills', 'prefetched'] as const;

export function toPublic(raw: PagerStatsRaw, meta: { vm: string; name: string; store: string; state: string }): PublicStats {
  const { latencyHistogram: _h, ...rest } = raw;
  return { ...meta, ...rest };
}

/** Sample `read` every intervalMs; each emission carries rates against the previous sample. */
export function statsStream(read: () => PublicStats, intervalMs = 1000): Observable<StatsSample> {
  const samples = interval(intervalMs).pipe(
    startWith(-1),
    map(() => ({ t: Date.now(), stats: read() })),
  );
  return samples.pipe(
    startWith(null),
    pairwise(),
    map(([prev, cur]) => {
      const c = cur!;
      const dt = prev ? (c.t - prev.t) / 1000 : 0;
      const rate = (k: (typeof RATE_KEYS)[number]) => (prev && dt > 0 ? Math.max(0, (c.stats[k] - prev.stats[k]) / dt) : 0);
      return {
        t: c.t,
        stats: c.stats,
        rates: { faults: rate('faults'), fetches: rate('fetches'), evictions: rate('evictions'), storeWrites: rate('storeWrites'), zeroFills: rate('zeroFills'), prefetched: rate('prefetched') },
      };
    }),
    share(),
  );
}
