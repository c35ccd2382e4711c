/**
 * QmpClient's greeting (backend/targets/qmp.ts) against stand-in sockets (a net server
 * playing a broken peer, which a real QEMU cannot be made to be): it is always settled,
 * never left waiting.
 */
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../backend/targets/qmp.ts';

/** A unix socket whose peer does `onConn` with each connection. */
async function peer(t: { teardown(fn: () => void): void }, onConn: (c: net.Socket) => void): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emqmp-'));
  const sock = path.join(dir, 'qmp.sock');
  const srv = net.createServer(onConn);
  await new Promise<void>((r) => srv.listen(sock, r));
  t.teardown(() => { srv.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  return sock;
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(() => 'resolved', (e: { code?: string }) => e.code);
}

test('a peer that closes in the middle of its greeting: QMP_UNREACHABLE at once', async (t) => {
  const sock = await peer(t, (c) => { c.write('{"QMP": {"version"'); setTimeout(() => c.destroy(), 50); });
  const t0 = Date.now();
  t.is(await codeOf(QmpClient.connect(sock, 5000)), 'QMP_UNREACHABLE');
  t.true(Date.now() - t0 < 2000);
});

test('a peer that sends half a greeting and then nothing: QMP_TIMEOUT after the time-out', async (t) => {
  const sock = await peer(t, (c) => { c.write('{"QMP": {"version"'); t.teardown(() => c.destroy()); });
  const t0 = Date.now();
  t.is(await codeOf(QmpClient.connect(sock, 400)), 'QMP_TIMEOUT');
  t.true(Date.now() - t0 >= 350);
});

test('a first line that is not a QMP greeting (HMP banner): NOT_QMP, naming what it sent', async (t) => {
  const sock = await peer(t, (c) => { c.write("QEMU 7.2.22 monitor - type 'help' for more information\r\n(qemu) "); t.teardown(() => c.destroy()); });
  const e = await QmpClient.connect(sock, 5000).then(() => null, (x: Error & { code?: string }) => x);
  t.is(e?.code, 'NOT_QMP');
  t.regex(e?.message ?? '', /not a QMP socket \(QEMU's human monitor, -monitor\): it greeted with "QEMU 7\.2\.22 monitor/);
});

test('a real greeting, then answers matched by id', async (t) => {
  const sock = await peer(t, (c) => {
    c.write('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\r\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(buf.slice(0, nl)) as { execute: string; id: string };
        buf = buf.slice(nl + 1);
        c.write(JSON.stringify({ return: m.execute === 'query-status' ? { status: 'running' } : {}, id: m.id }) + '\r\n');
      }
    });
    t.teardown(() => c.destroy());
  });
  const q = await QmpClient.connect(sock, 5000);
  t.teardown(() => q.close());
  t.is(q.version?.qemu.major, 7);
  t.deepEqual(await q.execute('query-status'), { status: 'running' });
});

test('a QMP socket with pretty=on (its greeting over many lines): NOT_QMP, saying so', async (t) => {
  const sock = await peer(t, (c) => { c.write('{\n    "QMP": {\n        "version": {}\n    }\n}\n'); t.teardown(() => c.destroy()); });
  const e = await QmpClient.connect(sock, 5000).then(() => null, (x: Error & { code?: string }) => x);
  t.is(e?.code, 'NOT_QMP');
  t.regex(e?.message ?? '', /pretty=on/);
});
