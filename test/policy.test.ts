/**
 * The replacement policy, measured by hit rate: backend/bench/policy-sim.cc replays the
 * bench workloads (the touch streams of workload.c, same seed) against the pager's own
 * policy code (native/replacement.h, 'rr' and 'fifo'), seeing only what the pager sees.
 * The refault-rate policy must beat FluidMem's / umap's FIFO where replacement matters
 * (zipf: skewed reuse; seq: a loop larger than the cap) and not lose on uniform random
 * touches, where no policy can do better than cap / size. The pager runs this same
 * code (Pager::list_insert / pick_victims); the simulator makes these checks quick and
 * deterministic, and bench-pager.test.ts compares the two policies on the real pager.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from './helpers/guest.ts';

interface Row {
  hitRate: number;
  fetches: number;
  evictions: number;
  wpFaults: number;
}

let bin = '';
test.before(() => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'em-policy-sim-'));
  bin = path.join(dir, 'policy-sim');
  execFileSync('g++', ['-O2', '-std=c++17', '-Wall', '-Werror', '-o', bin, path.join(REPO_ROOT, 'backend/bench/policy-sim.cc')], { stdio: 'pipe' });
});
test.after.always(() => {
  if (bin) fs.rmSync(path.dirname(bin), { recursive: true, force: true });
});

/** Run the simulator; one row per policy, keyed by its name. */
function simulate(args: string[]): Record<string, Row> {
  const out = execFileSync(bin, args, { encoding: 'utf8' });
  const rows: Record<string, Row> = {};
  for (const line of out.split('\n')) {
    const m = /^\S+\s+(\S+)\s+hitRate ([\d.]+)\s+fetches\s+(\d+)\s+prefetched\s+\d+\s+evictions\s+(\d+)\s+wpFaults\s+(\d+)/.exec(line);
    if (m) rows[m[1]!] = { hitRate: Number(m[2]), fetches: Number(m[3]), evictions: Number(m[4]), wpFaults: Number(m[5]) };
  }
  return rows;
}

test('zipf: the refault-rate policy beats FIFO by 2 points of hit rate and matches an LRU that sees every touch', (t) => {
  const r = simulate(['--workload', 'zipf', '--policy', 'fifo,rr,lru']);
  t.log(JSON.stringify(r));
  t.true(r.rr!.hitRate > r.fifo!.hitRate + 0.02, `rr ${r.rr!.hitRate} vs fifo ${r.fifo!.hitRate}`);
  t.true(r.rr!.hitRate > r.lru!.hitRate - 0.005, `rr ${r.rr!.hitRate} vs lru ${r.lru!.hitRate}`);
  t.true(r.rr!.evictions < 0.85 * r.fifo!.evictions, `evictions rr ${r.rr!.evictions} vs fifo ${r.fifo!.evictions}`);
});

test('zipf: the estimator adapts to whether the hot set holds still or moves, and does about as well as the better fixed set of constants in each case', (t) => {
  // rr adapts per window of evictions; moving = its moving constants all the time, still
  // = its still ones all the time (by the surprise test never passing).
  const policies = 'rr,rr/adapt=0,rr/moving=1000';
  const fixed = simulate(['--workload', 'zipf', '--policy', policies]);
  const moved = simulate(['--workload', 'zipf', '--shift', '100000', '--policy', policies]);
  t.log(JSON.stringify({ fixed, moved }));
  const [rr, moving, still] = ['rr', 'rr/adapt=0', 'rr/moving=1000'];
  // A fixed popularity: averaged, slowly aging estimates keep ~5% of the fetches away.
  t.true(fixed[rr]!.fetches < 0.97 * fixed[moving]!.fetches, `fixed: rr ${fixed[rr]!.fetches} vs moving ${fixed[moving]!.fetches} fetches`);
  t.true(fixed[rr]!.hitRate > fixed[still]!.hitRate - 0.002, `fixed: rr ${fixed[rr]!.hitRate} vs still ${fixed[still]!.hitRate}`);
  // A hot set that moves every 100k touches: the still constants lose 1.5 points; rr takes
  // a window to notice each move (0.3 points).
  t.true(moved[rr]!.hitRate > moved[still]!.hitRate + 0.008, `moving: rr ${moved[rr]!.hitRate} vs still ${moved[still]!.hitRate}`);
  t.true(moved[rr]!.hitRate > moved[moving]!.hitRate - 0.005, `moving: rr ${moved[rr]!.hitRate} vs moving ${moved[moving]!.hitRate}`);
});

test('seq: a loop larger than the cap keeps what it found resident (fewer evictions than FIFO)', (t) => {
  const r = simulate(['--workload', 'seq', '--policy', 'fifo,rr']);
  t.log(JSON.stringify(r));
  t.true(r.rr!.hitRate >= r.fifo!.hitRate, `rr ${r.rr!.hitRate} vs fifo ${r.fifo!.hitRate}`);
  t.true(r.rr!.evictions < 0.6 * r.fifo!.evictions, `evictions rr ${r.rr!.evictions} vs fifo ${r.fifo!.evictions}`);
});

test('random: no policy beats cap / size; the refault-rate policy does not lose to FIFO', (t) => {
  const r = simulate(['--workload', 'random', '--policy', 'fifo,rr']);
  t.log(JSON.stringify(r));
  t.true(Math.abs(r.rr!.hitRate - r.fifo!.hitRate) < 0.01, `rr ${r.rr!.hitRate} vs fifo ${r.fifo!.hitRate}`);
  t.true(r.rr!.hitRate > 0.48 && r.rr!.hitRate < 0.51, `hit rate ${r.rr!.hitRate} (cap / size = 0.5)`);
});

test('arming dirty pages (slow stores) saves fetches at the price of write-protect faults', (t) => {
  const plain = simulate(['--workload', 'zipf', '--policy', 'rr']).rr!;
  const armed = simulate(['--workload', 'zipf', '--policy', 'rr', '--arm', '1']).rr!;
  t.log(JSON.stringify({ plain, armed }));
  t.true(armed.fetches < plain.fetches, `fetches armed ${armed.fetches} vs ${plain.fetches}`);
  t.true(armed.wpFaults > 5 * plain.wpFaults, `write-protect faults armed ${armed.wpFaults} vs ${plain.wpFaults}`);
});

test('the simulator is deterministic and refuses a tuning that would divide by zero', (t) => {
  t.deepEqual(simulate(['--workload', 'zipf', '--policy', 'rr']), simulate(['--workload', 'zipf', '--policy', 'rr']));
  const bad = spawnSync(bin, ['--workload', 'zipf', '--policy', 'rr/age=0'], { encoding: 'utf8' });
  t.is(bad.status, 2);
  t.regex(bad.stderr, /rr option age must be at least 1/);
});
