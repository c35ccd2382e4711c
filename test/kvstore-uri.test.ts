import test from 'ava';
import { parseStoreUri, redactUri } from '../kvstore/uri.ts';
import { openStore } from '../kvstore/index.ts';

test('store URIs of DESIGN.md parse exactly', (t) => {
  t.deepEqual(parseStoreUri('memory:'), { kind: 'memory' });
  t.deepEqual(parseStoreUri('file:///var/lib/elasticmem/pages'), { kind: 'file', path: '/var/lib/elasticmem/pages' });
  t.deepEqual(parseStoreUri('file:///tmp/a%20b/'), { kind: 'file', path: '/tmp/a b' });
  t.like(parseStoreUri('redis://10.0.0.1:6380/2'), { kind: 'redis', tls: false, host: '10.0.0.1', port: 6380, db: 2 });
  t.like(parseStoreUri('redis://localhost'), { kind: 'redis', port: 6379, db: 0 });
  t.like(parseStoreUri('rediss://u:p%40ss@r.example:6390'), { kind: 'redis', tls: true, username: 'u', password: 'p@ss', port: 6390 });
  t.like(parseStoreUri('redis://:secret@[::1]:7000'), { kind: 'redis', host: '::1', port: 7000, password: 'secret' });
  t.deepEqual(parseStoreUri('redis+cluster://h1:7000,h2:7001'), {
    kind: 'redis-cluster', tls: false, nodes: [{ host: 'h1', port: 7000 }, { host: 'h2', port: 7001 }], username: undefined, password: undefined,
  });
  t.deepEqual(parseStoreUri('memcached://a:11211,b:11212'), { kind: 'memcached', servers: [{ host: 'a', port: 11211 }, { host: 'b', port: 11212 }] });
  t.like(parseStoreUri('aerospike://h1:3000,h2:3000/ns'), { kind: 'aerospike', namespace: 'ns', set: 'elasticmem', hosts: [{ host: 'h1', port: 3000 }, { host: 'h2', port: 3000 }] });
  t.like(parseStoreUri('aerospike://h1/ns/pages'), { kind: 'aerospike', namespace: 'ns', set: 'pages', hosts: [{ host: 'h1', port: 3000 }] });
});

const bad: [string, RegExp][] = [
  ['', /empty/],
  ['redis', /no scheme/],
  ['ftp://x', /unknown scheme 'ftp:'/],
  ['memory:x', /takes nothing/],
  ['file://relative/path', /names a host/],
  ['file:/nope', /absolute path/],
  ['file:///', /cannot live at '\/'/],
  ['redis://h:99999', /port '99999'/],
  ['redis://h:abc', /port 'abc'/],
  ['redis://h:1/x', /database 'x'/],
  ['redis://a:1,b:2', /one server.*redis\+cluster/],
  ['redis+cluster://a:1/3', /no database number/],
  ['redis+cluster://a:1,,b:2', /empty host/],
  ['memcached://u:p@a:1', /authentication is not supported/],
  ['memcached://a:1/x', /no path/],
  ['aerospike://h:3000', /namespace/],
  ['aerospike://h:3000/ns/set/extra', /too many path parts/],
  ['redis://h:1?tls=1', /query strings/],
];
for (const [uri, re] of bad) {
  test(`bad store URI '${uri}' → BAD_STORE_URI naming the problem, with an example`, async (t) => {
    const e = t.throws(() => parseStoreUri(uri), { code: 'BAD_STORE_URI' } as never) as Error;
    t.regex(e.message, re);
    t.regex(e.message, /for example: \S+:/);
    // openStore rejects the same way, before connecting to anything.
    await t.throwsAsync(openStore(uri), { code: 'BAD_STORE_URI' } as never);
  });
}

test('passwords never appear in store.uri', (t) => {
  t.is(redactUri('redis://user:secret@h:1/0'), 'redis://user:***@h:1/0');
  t.is(redactUri('rediss://:secret@h:1'), 'rediss://:***@h:1');
  t.is(redactUri('redis://h:1/0'), 'redis://h:1/0');
  // The parser takes the credentials up to the last '@': so does the mask.
  t.is(redactUri('redis://u:p@ss@h:1'), 'redis://u:***@h:1');
  t.is(parseStoreUri('redis://u:p@ss@h:1').kind, 'redis');
  t.is(redactUri('file:///var/lib/a@b'), 'file:///var/lib/a@b', 'a path is not a password');
  // A '/' in a password (not %-encoded) belongs to the password, not to the path.
  t.like(parseStoreUri('redis://u:pa/ss@h:6379/3'), { kind: 'redis', host: 'h', port: 6379, db: 3, username: 'u', password: 'pa/ss' });
  t.like(parseStoreUri('rediss+cluster://:pa/ss@h1:7000,h2:7001'), { kind: 'redis-cluster', password: 'pa/ss', nodes: [{ host: 'h1', port: 7000 }, { host: 'h2', port: 7001 }] });
  t.like(parseStoreUri('aerospike://u:pa/ss@h1:3000/ns/set'), { kind: 'aerospike', password: 'pa/ss', namespace: 'ns', set: 'set' });
  t.is(redactUri('redis://u:pa/ss@h:6379/3'), 'redis://u:***@h:6379/3');
  // A URI that does not parse: its error never quotes the password.
  for (const bad of ['redis:u:hunter2@h', 'redis://u:hunter2@h:nope', 'memcached://u:hun@ter2@h:x', 'redis://u:hun/ter2@h:nope', 'redis+cluster://u:hun/ter2@h1:x']) {
    const e = t.throws(() => parseStoreUri(bad)) as Error;
    t.notRegex(e.message, /hunter2|hun@ter2|ter2/, bad);
  }
});

test('a bad key file is rejected before connecting (BAD_STORE_KEY)', async (t) => {
  await t.throwsAsync(openStore('file:///tmp/never-created-em-store', { keyFile: '/nonexistent/key' }), { code: 'BAD_STORE_KEY' } as never);
});
