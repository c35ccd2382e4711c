/**
 * Product code does not import tests: nothing under backend/, kvstore/ or native/ names a
 * file under test/. (The demo once booted its guest through test/helpers; that code
 * now lives in backend/vm and the test helpers import it.) One known exception is
 * listed with its reason; a new one fails here.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from './helpers/guest.ts';

/** file -> test modules it may still import, and why. */
const KNOWN: Record<string, string[]> = {
  // bench vm starts redis-server/memcached by name through the servers helper (owned by the stores' tests).
  'backend/bench/vm-bench.ts': ['../../test/helpers/servers.ts'],
};

function tsFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? tsFiles(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

test('no product module imports a test module', (t) => {
  const bad: string[] = [];
  let scanned = 0;
  for (const top of ['backend', 'kvstore', 'native']) {
    for (const file of tsFiles(path.join(REPO_ROOT, top))) {
      scanned++;
      const rel = path.relative(REPO_ROOT, file);
      const text = fs.readFileSync(file, 'utf8');
      for (const m of text.matchAll(/(?:import|from)\s*\(?\s*['"]([^'"]+)['"]/g)) {
        const spec = m[1]!;
        if (!spec.startsWith('.')) continue;
        const target = path.relative(REPO_ROOT, path.resolve(path.dirname(file), spec));
        if (target.split(path.sep)[0] === 'test' && !(KNOWN[rel] ?? []).includes(spec)) bad.push(`${rel} imports ${spec}`);
      }
    }
  }
  t.true(scanned > 30, `${scanned} files scanned`);
  t.deepEqual(bad, []);
});
