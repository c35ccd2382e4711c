/**
 * A store password never leaves the daemon except into its state file (mode 0600, which
 * a restarted daemon needs to re-open the store): not in attach's answer, list, list
 * --json, stats, stats --json, error messages, nor the daemon log. Against a real
 * password-protected redis-server (requirepass) and a real guest that pages into it.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { bootDomain } from './helpers/libvirt.ts';
import { startDaemon } from './helpers/daemon.ts';
import { startRedis } from './helpers/servers.ts';

const PASSWORD = 'S3cr3t-pw-4711';
const WRONG = 'Wr0ng-pw-0815';
const WORKLOAD = { sizeMiB: 64, pattern: 'random' as const, write: 0.25, seed: 61, passes: 0, pauseMs: 100 };

test('a redis password appears in no output, error or log line; the state file keeping it is 0600 in a 0700 folder', async (t) => {
  const [dom, redis] = await Promise.all([
    bootDomain(t, { memMiB: 192, maxMemMiB: 320, template: 'memfd', workload: WORKLOAD }),
    startRedis(t, { args: ['--requirepass', PASSWORD] }),
  ]);
  const uri = `redis://:${PASSWORD}@127.0.0.1:${redis.port}`;
  const shown = `redis://:***@127.0.0.1:${redis.port}`;
  // The redis really wants the password: without it, nothing.
  t.regex(await redis.cli('ping').catch((e: { stdout?: string; message: string }) => e.stdout ?? e.message), /NOAUTH/);
  // The config's default store carries it too (the daemon logs its default store at start).
  const d = await startDaemon(t, { config: `store: "${uri}"\n` });
  await dom.console.waitForPasses(1, 120_000);
  const outputs: [string, string][] = [];
  const seen = (what: string, text: string) => { outputs.push([what, text]); return text; };

  // A wrong password: refused, and the message masks it.
  const bad = await d.cli('attach', dom.name, '--local', '32M', '--store', `redis://:${WRONG}@127.0.0.1:${redis.port}`);
  t.is(bad.code, 1);
  t.regex(seen('attach (wrong password)', bad.stderr), /\[STORE_UNREACHABLE\]/);
  t.true(bad.stderr.includes(`redis://:***@127.0.0.1:${redis.port}`), bad.stderr);
  t.false(bad.stderr.includes(WRONG), bad.stderr);

  const a = await d.cli('attach', dom.name, '--local', '32M', '--store', uri);
  t.is(a.code, 0, a.stderr);
  t.regex(seen('attach', a.stdout + a.stderr), new RegExp(`store ${shown.replace(/[*+.]/g, '\\$&')}`));
  const again = await d.cli('attach', dom.name, '--local', '32M', '--store', uri, '--json');
  t.is(again.code, 1);
  t.regex(seen('attach again', again.stdout + again.stderr), /ALREADY_ATTACHED/);

  // The guest pages into the store (so the password was used for real).
  await dom.console.waitForPasses(dom.console.passes.length + 2, 120_000);
  const sj = await d.cli('stats', dom.name, '--json');
  const st = JSON.parse(seen('stats --json', sj.stdout));
  t.true(st.remotePages > 0 && st.storeWrites > 0, 'pages went to the password-protected redis');
  t.is(st.store, shown);
  seen('stats', (await d.cli('stats', dom.name)).stdout);
  const lj = JSON.parse(seen('list --json', (await d.cli('list', '--json')).stdout));
  t.is(lj.vms[0].store, shown);
  t.true(seen('list', (await d.cli('list')).stdout).includes(shown));
  t.true(Number(await redis.cli('-a', PASSWORD, '--no-auth-warning', 'dbsize')) > 0);

  // The state file keeps it (a restarted daemon re-opens the store), readable by root only.
  t.true(fs.readFileSync(d.state, 'utf8').includes(uri));
  t.is(fs.statSync(d.state).mode & 0o777, 0o600);
  t.is(fs.statSync(path.dirname(d.state)).mode & 0o777, 0o700);

  const det = await d.cli('detach', dom.name);
  t.is(det.code, 0, det.stderr);
  seen('detach', det.stdout + det.stderr);
  seen('daemon log', d.log());
  t.regex(d.log(), new RegExp(`default store ${shown.replace(/[*+.]/g, '\\$&')}`));
  for (const [what, text] of outputs) {
    t.false(text.includes(PASSWORD), `${what} shows the password:\n${text}`);
    t.false(text.includes(WRONG), `${what} shows the wrong password:\n${text}`);
  }
});
