import test from 'ava';
import crypto from 'node:crypto';
import v8 from 'node:v8';
import vm from 'node:vm';
import { RespParser, RespClient, encodeCommand, RespError } from '../kvstore/resp-client.ts';
import { startRedis } from './helpers/servers.ts';
import { crc32c, crc32cJs, envelopeCrc, crc32cIsNative } from '../kvstore/crc32c.ts';
import { envelopeCrcJs } from '../kvstore/crc32c.ts';

const norm = (x: unknown): unknown =>
  Buffer.isBuffer(x) ? 'B:' + x.toString('hex') : Array.isArray(x) ? x.map(norm) : x instanceof RespError ? 'E:' + x.message : x;

test('RESP parser: every reply type, identical however the stream is split', (t) => {
  const vals = [Buffer.from('hello'), null, Buffer.alloc(0), crypto.randomBytes(5000)];
  const stream = Buffer.concat([
    Buffer.from('+OK\r\n-ERR bad thing\r\n:42\r\n$-1\r\n*-1\r\n*0\r\n'),
    Buffer.from(`*${vals.length}\r\n`),
    ...vals.map((v) => (v === null ? Buffer.from('$-1\r\n') : Buffer.concat([Buffer.from(`$${v.length}\r\n`), v, Buffer.from('\r\n')]))),
    Buffer.from('*2\r\n$1\r\n0\r\n*2\r\n$3\r\nabc\r\n$2\r\nde\r\n'),
  ]);
  const ref: unknown[] = [];
  new RespParser((v) => ref.push(v)).feed(stream);
  t.deepEqual(norm(ref), norm(['OK', new RespError('ERR bad thing'), 42, null, null, [], vals, [Buffer.from('0'), [Buffer.from('abc'), Buffer.from('de')]]]));
  // Pieces of one buffer (contiguous: values are views even when split) and copies of the
  // pieces (separate buffers: a split value is copied together).
  for (const contiguous of [true, false]) {
    let bad = 0;
    let copies = 0;
    for (let a = 1; a < stream.length; a += 13) {
      for (let b = a + 1; b < stream.length; b += 307) {
        const got: unknown[] = [];
        const p = new RespParser((v) => got.push(v));
        const piece = (x: Buffer) => (contiguous ? x : Buffer.from(x));
        p.feed(piece(stream.subarray(0, a)));
        p.feed(piece(stream.subarray(a, b)));
        p.feed(piece(stream.subarray(b)));
        if (JSON.stringify(norm(got)) !== JSON.stringify(norm(ref))) bad++;
        const big = (got[6] as Buffer[])[3]!;
        if (big.buffer !== stream.buffer) copies++;
      }
    }
    t.is(bad, 0, `no split point changes the decoded replies (${contiguous ? 'contiguous' : 'separate'} chunks)`);
    if (contiguous) t.is(copies, 0, 'a value split between contiguous chunks is a view, never a copy');
  }
});

test('RESP encoder: arrays of bulk strings, binary-safe', (t) => {
  t.is(encodeCommand(['SET', 'k', Buffer.from([0, 13, 10])]).toString('latin1'), '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\0\r\n\r\n');
  t.is(encodeCommand(['GET', 'é']).toString('utf8'), '*2\r\n$3\r\nGET\r\n$2\r\né\r\n');
  for (const n of [0, 9, 10, 99, 100, 4112, 10000, 123456]) {
    const v = Buffer.alloc(n, 'v');
    const want = Buffer.concat([Buffer.from(`*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$${n}\r\n`), v, Buffer.from('\r\n')]);
    t.true(encodeCommand(['SET', 'k', v]).equals(want), `a ${n}-byte value`);
  }
  const many = Array.from({ length: 1025 }, (_, i) => String(i));
  t.true(encodeCommand(many).toString('latin1').startsWith('*1025\r\n$1\r\n0\r\n'), 'a 4-digit argument count');
});

test('RESP encoder: in-place arguments are written into the frame, same bytes as buffers', (t) => {
  const v = [crypto.randomBytes(4112), crypto.randomBytes(3)];
  const seen: number[] = [];
  const inPlace = v.map((b) => ({ size: b.length, fill(dst: Buffer) { seen.push(dst.length); b.copy(dst); } }));
  const want = encodeCommand(['MSET', 'a', v[0]!, 'b', v[1]!]);
  t.true(encodeCommand(['MSET', 'a', inPlace[0]!, 'b', inPlace[1]!]).equals(want));
  t.true(encodeCommand(['MSET', 'a', inPlace[0]!, 'b', inPlace[1]!], Buffer.alloc(64 * 1024)).equals(want), 'into a reused frame');
  t.deepEqual(seen, [4112, 3, 4112, 3], 'each fill got a slice of exactly its size');
});

test('CRC-32C: native (SSE4.2) and JavaScript agree; standard check value', (t) => {
  t.true(crc32cIsNative, 'the addon provides the hardware CRC');
  t.is(crc32c(Buffer.from('123456789')), 0xe3069283);
  t.is(crc32cJs(Buffer.from('123456789')), 0xe3069283);
  for (const n of [0, 1, 7, 8, 9, 4096, 4111]) {
    const b = crypto.randomBytes(n);
    t.is(crc32c(b, 99), crc32cJs(b, 99), `length ${n}`);
  }
  const v = crypto.randomBytes(4112);
  t.is(envelopeCrc(v, 0xabcdef, 3, 0x80000001), envelopeCrcJs(v, 0xabcdef, 3, 0x80000001));
  t.not(envelopeCrc(v, 0xabcdef, 3, 0x80000001), envelopeCrc(v, 0xabcdef, 3, 0x80000002), 'the page key is covered');
});

test('RESP client: an answered command keeps nothing alive (no reply retained by the client)', async (t) => {
  // A reply held by the client after it was delivered pins its socket chunks: at batch
  // 16 that kept ~100 MB alive and cost a full mark-compact every few hundred batches.
  const server = await startRedis(t);
  const c = new RespClient({ host: '127.0.0.1', port: server.port }, { connectTimeoutMs: 2000, opTimeoutMs: 5000 });
  t.teardown(() => c.close());
  await c.send(['SET', 'k', crypto.randomBytes(20_000)]);
  const refs: WeakRef<object>[] = [];
  for (let i = 0; i < 20; i++) refs.push(new WeakRef((await c.send(['MGET', 'k', 'k'])) as object));
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  await new Promise((r) => setImmediate(r)); // WeakRef targets are kept until the job ends
  gc();
  t.is(refs.filter((r) => r.deref() !== undefined).length, 0, 'every delivered reply was collected');
  t.is(((await c.send(['GET', 'k'])) as Buffer).length, 20_000, 'the connection still works');
});

test('RESP client: a throwing in-place fill throws from send, sends nothing, and the connection stays in order', async (t) => {
  const server = await startRedis(t);
  const c = new RespClient({ host: '127.0.0.1', port: server.port }, { connectTimeoutMs: 2000, opTimeoutMs: 5000 });
  t.teardown(() => c.close());
  await c.connect();
  const bad = { size: 4, fill() { throw new Error('fill failed'); } };
  t.throws(() => c.send(['SET', 'x', Buffer.from('1'), 'y', bad]), { message: 'fill failed' });
  t.is(await c.send(['EXISTS', 'x']), 0, 'nothing of the failed command reached the server');
  t.is(await c.send(['SET', 'x', 'ok']), 'OK');
  t.is(((await c.send(['GET', 'x'])) as Buffer).toString(), 'ok', 'replies still match their commands');
});
