// The example config shipped in vm-configs/ parses, and the config check rejects a
// store URI exactly when attach would (both use kvstore/uri.ts).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { parseConfig } from '../backend/daemon/config.ts';

const example = path.join(import.meta.dirname, '..', 'vm-configs', 'elasticmem.example.yaml');

test('vm-configs/elasticmem.example.yaml is a valid daemon config', (t) => {
  const cfg = parseConfig(fs.readFileSync(example, 'utf8'), example);
  t.is(cfg.store, 'memory:');
  t.is(cfg.limits.maxVms, 16);
  t.is(cfg.limits.minLocal, 16 * 1024 * 1024);
  t.is(cfg.vms['web1']?.local, 512 * 1024 * 1024);
  t.is(cfg.vms['batch1']?.store, 'aerospike://10.0.0.1:3000,10.0.0.2:3000/elasticmem/pages');
});

test('config store URIs: accepted and refused as attach would', (t) => {
  for (const ok of ['rediss+cluster://a:7000,b:7000', 'redis://h:6379/2', 'memcached://a:1,b:2', 'file:///var/lib/em']) {
    t.is(parseConfig(`store: "${ok}"\n`, 'c.yaml').store, ok, ok);
  }
  const cases: [string, RegExp][] = [
    ['redis://h:99999', /port/],
    ['mongo://x', /unknown scheme 'mongo:'/],
    ['file://relative/p', /three slashes/],
    ['redis://u:hunter2@h:nope', /\*\*\*/],
  ];
  for (const [uri, re] of cases) {
    const e = t.throws(() => parseConfig(`store: "${uri}"\n`, 'c.yaml'), undefined, uri) as Error & { code?: string };
    t.is(e.code, 'BAD_CONFIG', uri);
    t.regex(e.message, /c\.yaml: store: /, uri);
    t.regex(e.message, re, uri);
    t.notRegex(e.message, /hunter2/, 'passwords never appear');
  }
});
