/**
 * The daemon's control socket, black-box: the real daemon process, real clients.
 * Root only (file modes and peer credentials, each tested on its own), malformed
 * requests answered with BAD_REQUEST and changing nothing, one daemon per socket.
 */
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startDaemon, runCli, rawExchange } from './helpers/daemon.ts';

test('socket is 0600 in a 0700 directory; list and ping answer', async (t) => {
  const d = await startDaemon(t);
  t.is(fs.statSync(path.dirname(d.socket)).mode & 0o777, 0o700);
  t.is(fs.statSync(d.socket).mode & 0o777, 0o600);
  const r = await d.cli('list', '--json');
  t.is(r.code, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), { vms: [] });
  const [pong] = await rawExchange(d.socket, '{"v":1,"id":"p","op":"ping"}\n', 1);
  t.like(pong, { v: 1, id: 'p', ok: true, result: { protocol: 1, vms: 0 } });
  t.regex(d.log(), /daemon started: socket .*em\.sock/);
});

test('a non-root client is refused: by the socket mode, and by peer credentials when it can pass the mode', async (t) => {
  const d = await startDaemon(t);
  // Plain nobody: the 0600 socket (and 0700 folder) keep it out.
  const a = await runCli(['list', '--socket', d.socket], { as: 'nobody' });
  t.is(a.code, 1);
  t.regex(a.stderr, /control socket is root-only; run this command as root \[NOT_ROOT\]/);
  // nobody with CAP_DAC_OVERRIDE gets through the file modes: the daemon's peer
  // credential check must refuse it on its own.
  const b = await runCli(['list', '--socket', d.socket], { as: 'nobody', extraCaps: 'dac_override' });
  t.is(b.code, 1, b.stdout);
  t.regex(b.stderr, /root-only; client uid 65534 was refused/);
  t.regex(b.stderr, /\[NOT_ROOT\]/);
  await d.waitLog(/refused connection: client pid \d+ uid 65534 is not root/);
  // And root still gets in.
  t.is((await d.cli('list')).code, 0);
});

test('malformed requests get BAD_REQUEST naming the problem, with the request id, and change nothing', async (t) => {
  const d = await startDaemon(t);
  const cases: [string, string, RegExp][] = [
    ['garbage', '', /not valid JSON/],
    ['[1,2]', '', /must be a JSON object/],
    ['{"v":2,"id":"a","op":"list"}', 'a', /unsupported protocol version 2; this daemon speaks v:1/],
    ['{"id":"b","op":"list"}', 'b', /unsupported protocol version undefined/],
    ['{"v":1,"op":"list"}', '', /request id must be a string or a number/],
    ['{"v":1,"id":"c","op":"format-disk"}', 'c', /unknown op "format-disk"; known ops: ping, attach/],
    ['{"v":1,"id":"d","op":"attach","args":{"vm":42,"local":"64M"}}', 'd', /argument 'vm' of 'attach' must be a string, got 42/],
    ['{"v":1,"id":"e","op":"attach","args":{"vm":"x","local":"64M","force":true}}', 'e', /unknown argument 'force' for 'attach'; allowed: vm, local, store/],
    ['{"v":1,"id":"f","op":"resize","args":{"vm":"x"}}', 'f', /'resize' needs argument 'local'/],
    ['{"v":1,"id":"g","op":"list","args":[1]}', 'g', /args of 'list' must be a JSON object/],
    ['{"v":1,"id":"h","op":"list","extra":1}', 'h', /unknown request field 'extra'/],
    ['{"v":1,"id":"i","op":"attach","args":{"vm":"x","local":"12Q"}}', 'i', /'12Q' is not a size/],
    ['{"v":1,"id":"j","op":"attach","args":{"vm":"x","local":"64M","store":"mongo://h"}}', 'j', /bad store URI: unknown scheme 'mongo:'/],
    ['{"v":1,"id":"k","op":"detach","args":{"vm":"never-attached"}}', 'k', /VM 'never-attached' is not attached/],
    ['{"v":1,"id":"l","op":"stats","args":{"vm":"never-attached"}}', 'l', /is not attached/],
  ];
  const answers = await rawExchange(d.socket, cases.map((c) => c[0]).join('\n') + '\n', cases.length);
  t.is(answers.length, cases.length);
  for (const [req, id, re] of cases) {
    const a = answers.find((x) => x.id === id && (id !== '' || re.test(x.error?.message)));
    t.truthy(a, `an answer for ${req}`);
    t.false(a!.ok, req);
    t.true(typeof a!.error.code === 'string' && a!.error.code.length > 0, req);
    t.regex(a!.error.message, re, req);
  }
  // Requests that never reached a VM are BAD_REQUEST / BAD_SIZE; nothing was attached.
  t.is(answers.find((x) => x.id === 'c')!.error.code, 'BAD_REQUEST');
  t.is(answers.find((x) => x.id === 'i')!.error.code, 'BAD_SIZE');
  const list = await d.cli('list', '--json');
  t.deepEqual(JSON.parse(list.stdout), { vms: [] });
  // The daemon still serves after all that.
  const [pong] = await rawExchange(d.socket, '{"v":1,"id":7,"op":"ping"}\n', 1);
  t.like(pong, { id: '7', ok: true });
});

test('an oversized request line is refused and the connection closed', async (t) => {
  const d = await startDaemon(t);
  const answers = await rawExchange(d.socket, 'x'.repeat(100 * 1024), 1);
  t.is(answers[0]?.error?.code, 'BAD_REQUEST');
  t.regex(answers[0]!.error.message, /longer than 65536 bytes/);
  t.is((await d.cli('list')).code, 0);
});

test('a second daemon on the same socket refuses to start; a stale socket is replaced', async (t) => {
  const d = await startDaemon(t);
  const r = await runCli(['daemon', '--socket', d.socket, '--state', path.join(d.dir, 'other.json')]);
  t.is(r.code, 1);
  t.regex(r.stderr, /another elasticmem daemon is already listening on .*em\.sock \[DAEMON_RUNNING\]/);
  t.is((await d.cli('list')).code, 0, 'the first daemon is unaffected');
  // kill -9 leaves the socket file behind; the next daemon replaces it.
  await d.kill9();
  t.true(fs.existsSync(d.socket));
  const e = await runCli(['list', '--socket', d.socket]);
  t.regex(e.stderr, /exists but nobody listens/);
  const d2 = await d.restart();
  t.is((await d2.cli('list')).code, 0);
});
