/**
 * Black-box CLI tests: the real bin/elasticmem.js, spawned. Parsing, help for every
 * command, bad input caught before any daemon is contacted, and the error a command
 * gives when no daemon runs.
 */
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { runCli } from './helpers/daemon.ts';

const COMMANDS = ['daemon', 'attach', 'resize', 'grow', 'detach', 'list', 'stats', 'bench', 'demo'];

test('no arguments prints the overview on stderr and exits 2', async (t) => {
  const r = await runCli([]);
  t.is(r.code, 2);
  for (const c of COMMANDS) t.regex(r.stderr, new RegExp(`^  ${c}\\s`, 'm'));
});

test('help lists every command; help <cmd> and <cmd> --help print its usage with examples', async (t) => {
  const r = await runCli(['help']);
  t.is(r.code, 0);
  for (const c of COMMANDS) t.regex(r.stdout, new RegExp(`^  ${c}\\s`, 'm'));
  for (const c of COMMANDS) {
    const a = await runCli([c, '--help']);
    t.is(a.code, 0, `${c} --help: ${a.stderr}`);
    t.regex(a.stdout, new RegExp(`^usage: elasticmem ${c}`), c);
    if (c !== 'bench' && c !== 'demo') t.regex(a.stdout, /examples:\n  elasticmem /, `${c} has examples`);
    const b = await runCli(['help', c]);
    t.is(b.stdout, a.stdout);
  }
});

test('unknown command and unknown option: exit 2 with the name of the problem', async (t) => {
  const a = await runCli(['frobnicate']);
  t.is(a.code, 2);
  t.regex(a.stderr, /unknown command 'frobnicate'/);
  const b = await runCli(['attach', 'vm1', '--local', '64M', '--bogus']);
  t.is(b.code, 2);
  t.regex(b.stderr, /Unknown option '--bogus'/);
  t.regex(b.stderr, /elasticmem attach --help/);
  const c = await runCli(['help', 'nope']);
  t.is(c.code, 2);
});

test('options given twice or empty, a numeric --socket, options before the command, a pid past pid_max: exit 2, naming the problem', async (t) => {
  for (const [args, re] of [
    [['resize', 'vm1', '--local', '1G', '--local', '2G'], /--local given twice \("1G", "2G"\): give it once/],
    [['attach', 'vm1', '--local', '64M', '--store', 'redis://a:1', '--store', 'memory:'], /--store given twice/],
    [['attach', 'vm1', '--local', '64M', '--store-key', ''], /--store-key needs a value, not an empty string/],
    [['daemon', '--config', ''], /--config needs a value/],
    [['list', '--socket', '1234'], /--socket 1234: give the path of a Unix socket.*\[BAD_SOCKET\]/s],
    [['--socket', '/x', 'list'], /'--socket' comes before the command: options go after it/],
    [['bench', '--store', 'memory:', 'store'], /'--store' comes before the benchmark/],
    [['stats', 'pid:99999999999999999999'], /Linux process ids are at most 4194304/],
  ] as const) {
    const r = await runCli([...args]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, re, args.join(' '));
  }
  // --json: a command-line mistake is one JSON object on stdout too.
  for (const args of [['lst', '--json'], ['bench', 'nosuch', '--json']]) {
    const r = await runCli(args);
    t.is(r.code, 2, args.join(' '));
    t.is(JSON.parse(r.stdout).error.code, 'USAGE', args.join(' '));
  }
});

test('missing and extra positionals are usage errors', async (t) => {
  for (const [args, re] of [
    [['attach', '--local', '64M'], /missing the VM/],
    [['resize', 'vm1'], /--local SIZE is required/],
    [['grow', 'vm1'], /missing the VM and the SIZE/],
    [['detach'], /missing the VM/],
    [['stats'], /missing the VM/],
    [['list', 'extra'], /unexpected argument 'extra'/],
    [['attach', 'a', 'b', '--local', '1G'], /unexpected argument 'b'/],
  ] as const) {
    const r = await runCli([...args]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, re, args.join(' '));
  }
});

test('a size that is not a size is refused before contacting the daemon (exit 2, BAD_SIZE, names the value, shows an example)', async (t) => {
  const sock = '/nonexistent/em.sock';
  for (const [args, bad] of [
    [['attach', 'vm1', '--local', '12Q'], '12Q'],
    [['attach', 'vm1', '--local', 'lots'], 'lots'],
    [['attach', 'vm1', '--local=-5M'], '-5M'],
    [['attach', 'vm1', '--local', '-5M'], '-5M'],
    [['attach', 'vm1', '--local', '1000'], '1000'],
    [['resize', 'vm1', '--local', '0M'], '0M'],
    [['grow', 'vm1', '1.5X'], '1.5X'],
  ] as const) {
    const r = await runCli([...args, '--socket', sock]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, /\[BAD_SIZE\]/, args.join(' '));
    t.true(r.stderr.includes(`'${bad}'`), r.stderr);
    t.regex(r.stderr, /e\.g\. 512M|the nearest is \d+K/, 'an example, or the nearest size that is right');
    t.regex(r.stderr, new RegExp(`\\(see: elasticmem ${args[0]} --help\\)`));
    t.notRegex(r.stderr, /DAEMON_NOT_RUNNING|ambiguous/);
  }
  const neg = await runCli(['attach', 'vm1', '--local', '-5M', '--socket', sock]);
  t.regex(neg.stderr, /'-5M' must be larger than zero/);
});

test('a VM, store URI or key file that cannot be right is refused before contacting the daemon (exit 2, the fix named)', async (t) => {
  const sock = '/nonexistent/em.sock';
  for (const [args, code, re] of [
    [['attach', 'pid:abc', '--local', '64M'], 'BAD_VM', /'pid:abc' does not name a process: pid: takes a process id, e\.g\. pid:12345/],
    [['stats', 'pid:-3'], 'BAD_VM', /'pid:-3' does not name a process/],
    [['detach', 'qmp:'], 'BAD_VM', /'qmp:' names no socket: give the path of the VM's QMP socket, e\.g\. qmp:\/run\/vm1\/qmp\.sock/],
    [['attach', 'vm1', '--local', '64M', '--store', 'foo://x'], 'BAD_STORE_URI', /unknown scheme 'foo:'.*for example: memory:/],
    [['attach', 'vm1', '--local', '64M', '--store', 'redis://'], 'BAD_STORE_URI', /redis/],
    [['attach', 'vm1', '--local', '64M', '--store-key', '/nonexistent/key'], 'BAD_STORE_KEY', /cannot read the store key file '\/nonexistent\/key' \(ENOENT\); create one with: head -c 32 \/dev\/urandom > \/nonexistent\/key/],
    [['grow', 'vm1', '100M', '--dimm'], 'BAD_SIZE', /multiples of 128M on x86; 100M is not one \(e\.g\. grow vm1 128M --dimm\)/],
  ] as const) {
    const r = await runCli([...args, '--socket', sock]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.true(r.stderr.includes(`[${code}]`), `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re, args.join(' '));
    t.notRegex(r.stderr, /DAEMON_NOT_RUNNING/, args.join(' '));
  }
});

test('more command lines that cannot be right: exit 2 before any work, the fix named', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emcli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sock = path.join(dir, 'none.sock');
  const key = path.join(dir, 'k.key');
  fs.writeFileSync(key, crypto.randomBytes(32));
  const notPem = path.join(dir, 'ca.pem');
  fs.writeFileSync(notPem, 'not a certificate\n');
  const file = path.join(dir, 'a-file');
  fs.writeFileSync(file, 'x');
  const pager = ['bench', 'pager', '--workload', 'zipf', '--size', '8M', '--local', '4M', '--store', 'memory:'];
  for (const [args, re] of [
    [['grow', 'vm1', '-5M', '--socket', sock], /'-5M' cannot be negative: give a positive value/],
    [['attach', 'vm1', '--local', '--socket', sock], /--local needs a value before the next option \(e\.g\. --local VALUE\)/],
    [['list', '--socket', file], /is a regular file, not the daemon's control socket|not the daemon's control socket/],
    // bench store refuses what attach refuses, before connecting
    [['bench', 'store', '--store', 'memory:', '--store-key', key], /--store-key has nothing to encrypt with --store memory:/],
    [['bench', 'store', '--store', 'redis://127.0.0.1:1', '--tls-ca', notPem], /--tls-ca is for stores reached over TLS/],
    [['bench', 'store', '--store', 'rediss://127.0.0.1:1', '--tls-ca', notPem], /holds no PEM certificate/],
    [['bench', 'store', '--store', 'redis://127.0.0.1:1', '--store-key', path.join(dir, 'nokey')], /cannot read the store key file/],
    [[...pager, '--floor-repeats', '0'], /--floor-repeats must be a whole number from 1 to 20/],
    [[...pager, '--touches', '99999999999999999999'], /--touches 100000000000000000000 is too large/],
    [['bench', 'vm', '--pause-ms', '-5'], /--pause-ms must be an integer from 0 to 60000/],
    [['bench', 'vm', '--pass-timeout', '0'], /--pass-timeout must be a positive number of seconds/],
    [['bench', 'vm', '--seed', '-1'], /--seed must be a whole number >= 0/],
    [['bench', 'charts', '--out', file], /--out .*a-file is a file, not a folder/],
    [['bench', 'charts', '--from', file], /--from .*a-file: is a file, not a folder/],
  ] as const) {
    const r = await runCli([...args]);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, re, args.join(' '));
    t.notRegex(r.stderr, /ECONNREFUSED|STORE_UNAVAILABLE|booting|\n\s+at /, `${args.join(' ')}: refused before any work, no stack`);
  }
  t.deepEqual(fs.readdirSync(dir).sort(), ['a-file', 'ca.pem', 'k.key'], 'nothing was created');
});

test('with --json an error is also one JSON object on stdout; bench errors point to their own help', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emcli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const none = await runCli(['stats', 'vm1', '--json', '--socket', path.join(dir, 'none.sock')]);
  t.is(none.code, 1);
  t.deepEqual(JSON.parse(none.stdout), { error: { code: 'DAEMON_NOT_RUNNING', message: `no elasticmem daemon at ${path.join(dir, 'none.sock')}; start one with: elasticmem daemon --socket ${path.join(dir, 'none.sock')}` } });
  const bad = await runCli(['attach', 'vm1', '--local', '12Q', '--json']);
  t.is(bad.code, 2);
  t.is(JSON.parse(bad.stdout).error.code, 'BAD_SIZE');
  t.is((await runCli(['list', '--socket', path.join(dir, 'none.sock')])).stdout, '', 'without --json stdout stays empty');
  const b = await runCli(['bench', 'pager', '--workload', 'nope', '--size', '1M', '--local', '1M', '--store', 'memory:']);
  t.is(b.code, 2);
  t.regex(b.stderr, /\(see: elasticmem bench pager --help\)/);
  const s = await runCli(['bench', 'store', '--store', 'foo://x']);
  t.is(s.code, 2);
  t.regex(s.stderr, /^elasticmem bench store: error: bad store URI/);
  t.regex(s.stderr, /\(see: elasticmem bench store --help\)/);
  const h = await runCli(['help', 'bench', 'pager']);
  t.is(h.code, 0);
  t.is(h.stdout, (await runCli(['bench', 'pager', '--help'])).stdout);
  t.regex(h.stdout, /^usage: elasticmem bench pager/);
});

test('without a daemon, commands say how to start one', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emcli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = await runCli(['list', '--socket', path.join(dir, 'none.sock')]);
  t.is(r.code, 1);
  t.regex(r.stderr, /no elasticmem daemon at .*none\.sock; start one with: elasticmem daemon --socket/);
  t.regex(r.stderr, /\[DAEMON_NOT_RUNNING\]/);
  // A socket file nobody listens on (a daemon died): the hint keeps the --socket.
  const stale = path.join(dir, 'stale.sock');
  // (a listener killed with SIGKILL leaves its socket file behind, as a crashed daemon does)
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
  t.true(fs.statSync(stale).isSocket());
  const d = await runCli(['list', '--socket', stale]);
  t.is(d.code, 1);
  t.regex(d.stderr, /exists but nobody listens \(a daemon died\); start one with: elasticmem daemon --socket .*stale\.sock \[DAEMON_NOT_RUNNING\]/);
  // Not a socket at all.
  const notSock = await runCli(['list', '--socket', dir]);
  t.is(notSock.code, 2, 'a --socket that is not a socket is a wrong option value');
  t.regex(notSock.stderr, /is a directory, not the daemon's control socket; give the socket the daemon listens on with --socket \(default \/run\/elasticmem\/elasticmem\.sock\) \[BAD_SOCKET\]/);
});

test('a clone without its Node.js dependencies says to run the set-up (no module-resolution trace)', async (t) => {
  // The real bin/elasticmem.js in a copy of the repository's layout with no node_modules.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emcli-bare-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'bin'));
  const bin = path.join(dir, 'bin', 'elasticmem.js');
  fs.copyFileSync(new URL('../bin/elasticmem.js', import.meta.url), bin);
  const r = await runCli(['list'], { bin });
  t.is(r.code, 2);
  t.regex(r.stderr, /^elasticmem: its Node\.js dependencies are not installed \(Cannot find package 'tsx'/);
  t.true(r.stderr.includes(`run the set-up first: cd ${dir} && npm run setup`), r.stderr);
  t.notRegex(r.stderr, /ERR_MODULE_NOT_FOUND|at packageResolve/);
});

test('bench dispatches to its sub-benchmarks and names a missing one', async (t) => {
  const r = await runCli(['bench', 'nosuch']);
  t.is(r.code, 2);
  t.regex(r.stderr, /unknown benchmark 'nosuch'; choose store, pager or vm, or charts/);
  const h = await runCli(['bench', '--help']);
  t.is(h.code, 0);
  t.regex(h.stdout, /bench pager --workload seq\|random\|zipf/);
  // Every sub-benchmark is there and answers --help with its own usage.
  for (const sub of ['store', 'pager', 'vm', 'charts']) {
    const s = await runCli(['bench', sub, '--help']);
    t.is(s.code, 0, `bench ${sub} --help: ${s.stderr}`);
    t.regex(s.stdout, new RegExp(`^usage: elasticmem bench ${sub} `), `bench ${sub} --help`);
  }
});

test('daemon refuses a config with a bad key, naming the key', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emcfg-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cases: [string, RegExp][] = [
    ['store: mongo://x\n', /config .*: store: "mongo:\/\/x": bad store URI: unknown scheme 'mongo:'/],
    ['limits:\n  maxVms: 0\n', /limits\.maxVms: must be a whole number >= 1/],
    ['limits:\n  minLocal: huge\n', /limits\.minLocal: .*'huge' is not a size/],
    ['vms:\n  web1:\n    local: 12Q\n', /vms\.web1\.local: '12Q' is not a size/],
    ['limits:\n  minLocal: 0\n', /limits\.minLocal: '0' must be larger than zero/],
    ['vms:\n  web1:\n    colour: blue\n', /vms\.web1\.colour: unknown key/],
    ['stroe: "memory:"\n', /stroe: unknown key; allowed here: store/],
    ['store: memory:\n', /not valid YAML.*quote values that end in a colon/],
    ['store: [unclosed\n', /not valid YAML/],
  ];
  for (const [text, re] of cases) {
    const f = path.join(dir, 'c.yaml');
    fs.writeFileSync(f, text);
    const r = await runCli(['daemon', '--config', f, '--socket', path.join(dir, 's', 'em.sock'), '--state', path.join(dir, 'st.json')]);
    t.is(r.code, 2, `a config that cannot be right is a command-line mistake: ${text}`);
    t.regex(r.stderr, re, text);
    t.regex(r.stderr, /\[BAD_CONFIG\]/);
    t.false(fs.existsSync(path.join(dir, 's', 'em.sock')), 'no socket was created');
  }
  const missing = await runCli(['daemon', '--config', path.join(dir, 'nope.yaml'), '--socket', path.join(dir, 's', 'em.sock')]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /nope\.yaml: cannot read it \(ENOENT\); give the path of a YAML config file/);
});
