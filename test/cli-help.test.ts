/**
 * Black-box CLI tests: the real bin/elasticmem.js, spawned. Parsing, help for every
 * command, bad input caught before any daemon is contacted, and the error a command
 * gives when no daemon runs.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
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

test('a size that is not a size is refused before contacting the daemon (BAD_SIZE, names the value, shows an example)', async (t) => {
  const sock = '/nonexistent/em.sock';
  for (const [args, bad] of [
    [['attach', 'vm1', '--local', '12Q'], '12Q'],
    [['attach', 'vm1', '--local', 'lots'], 'lots'],
    [['attach', 'vm1', '--local=-5M'], '-5M'],
    [['attach', 'vm1', '--local', '1000'], '1000'],
    [['resize', 'vm1', '--local', '0M'], '0M'],
    [['grow', 'vm1', '1.5X'], '1.5X'],
  ] as const) {
    const r = await runCli([...args, '--socket', sock]);
    t.is(r.code, 1, args.join(' '));
    t.regex(r.stderr, /\[BAD_SIZE\]/, args.join(' '));
    t.true(r.stderr.includes(`'${bad}'`), r.stderr);
    t.regex(r.stderr, /e\.g\. 512M/);
    t.notRegex(r.stderr, /DAEMON_NOT_RUNNING/);
  }
});

test('without a daemon, commands say how to start one', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emcli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = await runCli(['list', '--socket', path.join(dir, 'none.sock')]);
  t.is(r.code, 1);
  t.regex(r.stderr, /no elasticmem daemon at .*none\.sock; start one with: elasticmem daemon --socket/);
  t.regex(r.stderr, /\[DAEMON_NOT_RUNNING\]/);
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
  // Sub-benchmarks written by other parts of the project: either they answer --help,
  // or the dispatcher says plainly that they are not there yet.
  for (const sub of ['store', 'pager', 'vm', 'charts']) {
    const file = path.join(import.meta.dirname, '..', 'backend', 'cli', 'commands', `bench-${sub}.ts`);
    const s = await runCli(['bench', sub, '--help']);
    if (fs.existsSync(file)) t.is(s.code, 0, `bench ${sub} --help: ${s.stderr}`);
    else {
      t.is(s.code, 1);
      t.regex(s.stderr, new RegExp(`'bench ${sub}' is not available yet`));
    }
  }
});

test('daemon refuses a config with a bad key, naming the key', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'emcfg-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cases: [string, RegExp][] = [
    ['store: mongo://x\n', /store: .*unknown scheme 'mongo:'/],
    ['limits:\n  maxVms: 0\n', /limits\.maxVms: must be a whole number >= 1/],
    ['limits:\n  minLocal: huge\n', /limits\.minLocal: .*'huge' is not a size/],
    ['vms:\n  web1:\n    local: 12Q\n', /vms\.web1\.local: .*'12Q' is not a size/],
    ['vms:\n  web1:\n    colour: blue\n', /vms\.web1\.colour: unknown key/],
    ['stroe: "memory:"\n', /stroe: unknown key; allowed here: store/],
    ['store: memory:\n', /not valid YAML.*quote values that end in a colon/],
    ['store: [unclosed\n', /not valid YAML/],
  ];
  for (const [text, re] of cases) {
    const f = path.join(dir, 'c.yaml');
    fs.writeFileSync(f, text);
    const r = await runCli(['daemon', '--config', f, '--socket', path.join(dir, 's', 'em.sock'), '--state', path.join(dir, 'st.json')]);
    t.is(r.code, 1, text);
    t.regex(r.stderr, re, text);
    t.regex(r.stderr, /\[BAD_CONFIG\]/);
    t.false(fs.existsSync(path.join(dir, 's', 'em.sock')), 'no socket was created');
  }
  const missing = await runCli(['daemon', '--config', path.join(dir, 'nope.yaml'), '--socket', path.join(dir, 's', 'em.sock')]);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /nope\.yaml: cannot read it \(ENOENT\)/);
});
