/**
 * The CLI's terminal rendering: progress bars and the `stats --watch` screen with its
 * sparklines of the last minute's rates. Pure functions over samples shaped like the
 * daemon's (backend/stats/stream.ts).
 */
import test from 'ava';
import { progressBar, sparkline, WatchView, renderWatchLine } from '../backend/cli/render.ts';
import type { PublicStats, StatsSample } from '../backend/stats/stream.ts';

function sample(i: number, rates: Partial<StatsSample['rates']>): StatsSample {
  const stats = {
    vm: 'vm-1', name: 'web1', store: 'memory:', state: 'attached', storeState: 'ok', storeError: '',
    residentPages: 1024, localCapPages: 2048, remotePages: 3072, totalPages: 4096,
    faults: 10 * i, fetches: 9 * i, evictions: 8 * i, cleanDrops: 0, storeWrites: 8 * i, prefetched: 0, zeroFills: 1,
    faultLatencyUs: { p50: 11, p99: 40 },
  } as unknown as PublicStats;
  return { t: 1_700_000_000_000 + 1000 * i, stats, rates: { faults: 0, fetches: 0, evictions: 0, storeWrites: 0, zeroFills: 0, prefetched: 0, ...rates } };
}

/** The sparkline of one trend line of a rendered screen (the 60 characters after its label). */
function trendOf(screen: string, label: string): string {
  const line = screen.split('\n').find((l) => l.startsWith(label.padEnd(14) + ' '));
  if (!line) throw new Error(`no '${label}' line in:\n${screen}`);
  return line.slice(15, 15 + 60);
}

test('sparkline: blocks scaled to the largest value, blank for nothing, the lowest block for a trickle', (t) => {
  t.is(sparkline([0, 1, 2, 4, 8]), ' ▁▂▄█');
  t.is(sparkline([0, 0, 0]), '   ');
  t.is(sparkline([]), '');
  t.is(sparkline([5, 5]), '██');
  t.is(sparkline([1000, 1]), '█▁', 'a trickle next to a burst is still drawn');
});

test('progress bar: filled share of the width, clamped', (t) => {
  t.is(progressBar(5, 10, 10), '[#####.....]');
  t.is(progressBar(20, 10, 4), '[####]');
  t.is(progressBar(0, 0, 4), '[####]', 'nothing to do is done');
});

test('stats --watch: the last 60 s of each rate as a sparkline; older samples drop out', (t) => {
  const view = new WatchView(60);
  let screen = '';
  // 70 samples: a fault burst at sample 5 (falls out of the window), then a ramp, a
  // spike at sample 65, no evictions at all.
  for (let i = 0; i < 70; i++) {
    const faults = i === 5 ? 1_000_000 : i === 65 ? 5000 : i;
    screen = view.render(sample(i, { faults, storeWrites: i % 2 ? 100 : 0 }));
  }
  t.true(screen.startsWith('\x1b[H\x1b[2J'), 'a full screen: home + clear');
  const faults = trendOf(screen, 'faults');
  t.is(faults.length, 60);
  t.is(faults.indexOf('█'), 65 - 10, 'the spike, in its place among the last 60 samples');
  t.is([...faults].filter((c) => c === '█').length, 1, 'the older, larger burst is out of the window');
  t.regex(screen, /faults\s+.{60}\s+now\s+69\s+max\s+5\.0k/);
  t.is(trendOf(screen, 'evictions').trim(), '', 'no evictions: a blank line');
  t.is(trendOf(screen, 'store writes'), ' █'.repeat(30), 'every other second (samples 10-69: even ones write nothing)');
  t.regex(screen, /resident  \[#{20}\.{20}\] 4M \/ cap 8M/);
  t.regex(screen, /fault latency  p50 11 us   p99 40 us/);
});

test('stats --watch on a pipe: one line per sample, no escape codes', (t) => {
  const line = renderWatchLine(sample(3, { faults: 12.4, evictions: 7 }));
  t.false(line.includes('\x1b'));
  t.regex(line, /web1 resident=1024\/2048 remote=3072 faults\/s=12 fetches\/s=0 evictions\/s=7 p50=11us p99=40us store=ok\n$/);
});
