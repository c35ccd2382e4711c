/**
 * Daemon configuration (YAML). Every key is checked; an unknown or malformed key is an
 * error that names it, and the daemon does not start.
 *
 *   store: "memory:"               # default store for attach without --store (quoted: a YAML value may not end in a colon)
 *   storeKeyFile: /etc/elasticmem/store.key   # AES-256-GCM key for pages at rest (attach without --store-key)
 *   compress: true                 # compress pages (LZ4 in memory:, deflate elsewhere; attach without --compress/--no-compress)
 *   tlsCaFile: /etc/elasticmem/ca.pem   # CA to trust for rediss:// stores besides the system's (attach without --tls-ca)
 *   socket: /run/elasticmem/elasticmem.sock
 *   state: /run/elasticmem/state.json
 *   pager:
 *     faultCpus: [2, 3]            # CPUs for each VM's fault thread (default: it follows the faulting vCPU)
 *     evictCpus: [0]               # CPUs for the eviction threads (default: any but the fault thread's)
 *     followFaults: false          # without faultCpus: leave the fault thread to the scheduler
 *   limits:
 *     maxVms: 16                   # attached VMs at once
 *     minLocal: 16M                # smallest resident cap attach/resize accept
 *   vms:
 *     guest1:                      # libvirt name or UUID, pid:<PID>, qmp:<path>
 *       store: rediss://127.0.0.1:6380
 *       local: 64M                 # cap used when attach has no --local
 *       storeKeyFile: /etc/elasticmem/guest1.key
 *       compress: false
 *       tlsCaFile: /etc/elasticmem/guest1-ca.pem
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { ElasticmemError } from '../../native/errors.ts';
import { parseSize } from '../size.ts';
import { shownUri } from './secrets.ts';
import { parseStoreUri } from '../../kvstore/uri.ts';
import { allowedCpus } from '../../native/pager.ts';
import { optionsFor } from './store-setup.ts';

export interface VmOverride { store?: string; local?: number; storeKeyFile?: string; compress?: boolean; tlsCaFile?: string }

export interface Config {
  store: string;
  /** Default key file for encryption at rest; applies to stores pages leave for (not memory:). */
  storeKeyFile?: string;
  /** Default for compressing pages (attach --compress / --no-compress). */
  compress?: boolean;
  /** Default CA file for rediss:// stores (attach --tls-ca). */
  tlsCaFile?: string;
  socket?: string;
  state: string;
  /** True when the config file named `state` itself (it then stays where it says, whatever the socket). */
  stateGiven?: boolean;
  limits: { maxVms: number; minLocal: number };
  /** Where the pagers' threads run (Pager.attach faultCpus / evictCpus / followFaults); absent: the pager's defaults. */
  pager: { faultCpus?: number[]; evictCpus?: number[]; followFaults?: boolean };
  vms: Record<string, VmOverride>;
  /** Where it came from, for messages. */
  source: string;
}

export const DEFAULT_STATE = '/run/elasticmem/state.json';

/**
 * The state file a daemon uses: --state, else the config's `state:`, else the default,
 * which moves beside the socket when the socket is not the default one: two daemons
 * must never take over each other's VMs through a shared state file.
 */
export function stateFileFor(config: Config, flagState: string | undefined, socket: string, defaultSocket: string): string {
  if (flagState) return flagState;
  if (config.stateGiven || socket === defaultSocket) return config.state;
  return path.join(path.dirname(socket), 'state.json');
}

export function defaultConfig(): Config {
  return { store: 'memory:', state: DEFAULT_STATE, limits: { maxVms: 16, minLocal: 16 * 1024 * 1024 }, pager: {}, vms: {}, source: '(defaults)' };
}

/** Parses the store URI as attach would (kvstore/uri.ts), so a URI the daemon starts
 *  with is one attach accepts; reachability is checked at attach. Passwords never
 *  appear in the message. */
export function checkStoreUri(uri: unknown, where: string): string {
  if (typeof uri !== 'string') {
    throw new ElasticmemError(`${where}: ${JSON.stringify(uri)} is not a store URI; write it as a string, e.g. memory: or redis://host:6379`, 'BAD_STORE_URI');
  }
  try {
    parseStoreUri(uri);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new ElasticmemError(`${where}: ${JSON.stringify(shownUri(uri))}: ${why.split(uri).join(shownUri(uri))}`, 'BAD_STORE_URI');
  }
  return uri;
}

function fail(file: string, key: string, msg: string): never {
  throw new ElasticmemError(`config ${file}: ${key}: ${msg}`, 'BAD_CONFIG');
}

function onlyKeys(file: string, where: string, obj: Record<string, unknown>, allowed: string[]): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) fail(file, where ? `${where}.${k}` : k, `unknown key; allowed here: ${allowed.join(', ')}`);
  }
}

const isMap = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A key file path: absolute (the daemon's working directory is nobody's business); its content is checked at attach. */
function keyFilePath(file: string, key: string, v: unknown): string {
  if (typeof v !== 'string' || !v.startsWith('/')) fail(file, key, `must be the absolute path of a key file (32 bytes; create one with: head -c 32 /dev/urandom > /etc/elasticmem/store.key), got ${JSON.stringify(v)}`);
  return v;
}

/** A CA file path: absolute, like a key file; its content is checked at attach. */
function caFilePath(file: string, key: string, v: unknown): string {
  if (typeof v !== 'string' || !v.startsWith('/')) fail(file, key, `must be the absolute path of a PEM file of CA certificates, got ${JSON.stringify(v)}`);
  return v;
}

function flag(file: string, key: string, v: unknown): boolean {
  if (typeof v !== 'boolean') fail(file, key, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** A value checked by a parser that names the value itself ("local: ..."): the key path replaces that name. */
function wrap<T>(file: string, key: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    const own = `${key.split('.').pop()}: `;
    const msg = (e as Error).message;
    fail(file, key, msg.startsWith(own) ? msg.slice(own.length) : msg);
  }
}

export function parseConfig(text: string, file: string): Config {
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (e) {
    const msg = (e as Error).message.split('\n')[0]!;
    const hint = /Nested mappings|Implicit map keys/.test(msg) ? ` (quote values that end in a colon: store: "memory:")` : '';
    throw new ElasticmemError(`config ${file}: not valid YAML: ${msg}${hint}`, 'BAD_CONFIG');
  }
  const cfg = defaultConfig();
  cfg.source = file;
  if (doc === null || doc === undefined) return cfg;
  if (!isMap(doc)) fail(file, '(top level)', 'must be a mapping of keys like store:, limits:, vms:');
  onlyKeys(file, '', doc, ['store', 'storeKeyFile', 'compress', 'tlsCaFile', 'socket', 'state', 'pager', 'limits', 'vms']);
  if (doc.store !== undefined) cfg.store = wrap(file, 'store', () => checkStoreUri(doc.store, 'store'));
  if (doc.storeKeyFile !== undefined) cfg.storeKeyFile = keyFilePath(file, 'storeKeyFile', doc.storeKeyFile);
  if (doc.compress !== undefined) cfg.compress = flag(file, 'compress', doc.compress);
  if (doc.tlsCaFile !== undefined) cfg.tlsCaFile = caFilePath(file, 'tlsCaFile', doc.tlsCaFile);
  if (doc.socket !== undefined) {
    if (typeof doc.socket !== 'string' || !doc.socket.startsWith('/')) fail(file, 'socket', 'must be an absolute path');
    cfg.socket = doc.socket;
  }
  if (doc.state !== undefined) {
    if (typeof doc.state !== 'string' || !doc.state.startsWith('/')) fail(file, 'state', 'must be an absolute path');
    cfg.state = doc.state;
    cfg.stateGiven = true;
  }
  if (doc.pager !== undefined) {
    const p = doc.pager;
    if (!isMap(p)) fail(file, 'pager', 'must be a mapping with faultCpus, evictCpus and/or followFaults');
    onlyKeys(file, 'pager', p, ['faultCpus', 'evictCpus', 'followFaults']);
    if (p.followFaults !== undefined) {
      const follow = flag(file, 'pager.followFaults', p.followFaults);
      if (follow && p.faultCpus !== undefined) fail(file, 'pager.followFaults', 'cannot be true with faultCpus (the fault thread stays on those CPUs): drop one of the two');
      cfg.pager.followFaults = follow;
    }
    const allowed = allowedCpus();
    for (const k of ['faultCpus', 'evictCpus'] as const) {
      const v = p[k];
      if (v === undefined) continue;
      if (!Array.isArray(v) || v.length === 0 || v.some((c) => !Number.isInteger(c) || !allowed.includes(c as number)))
        fail(file, `pager.${k}`, `must be a list of CPU numbers this machine has (${allowed.join(',')}), e.g. [${allowed[allowed.length - 1]}]; got ${JSON.stringify(v)}`);
      cfg.pager[k] = v as number[];
    }
  }
  if (doc.limits !== undefined) {
    const l = doc.limits;
    if (!isMap(l)) fail(file, 'limits', 'must be a mapping with maxVms and/or minLocal');
    onlyKeys(file, 'limits', l, ['maxVms', 'minLocal']);
    if (l.maxVms !== undefined) {
      if (typeof l.maxVms !== 'number' || !Number.isInteger(l.maxVms) || l.maxVms < 1) fail(file, 'limits.maxVms', `must be a whole number >= 1, got ${JSON.stringify(l.maxVms)}`);
      cfg.limits.maxVms = l.maxVms;
    }
    if (l.minLocal !== undefined) cfg.limits.minLocal = wrap(file, 'limits.minLocal', () => parseSize(l.minLocal, 'minLocal'));
  }
  if (doc.vms !== undefined) {
    if (!isMap(doc.vms)) fail(file, 'vms', 'must be a mapping from VM name to { store, local, storeKeyFile, compress, tlsCaFile }');
    for (const [name, v] of Object.entries(doc.vms)) {
      const key = `vms.${name}`;
      if (!isMap(v)) fail(file, key, 'must be a mapping with store, local, storeKeyFile, compress and/or tlsCaFile');
      onlyKeys(file, key, v, ['store', 'local', 'storeKeyFile', 'compress', 'tlsCaFile']);
      const o: VmOverride = {};
      if (v.store !== undefined) o.store = wrap(file, `${key}.store`, () => checkStoreUri(v.store, 'store'));
      if (v.local !== undefined) o.local = wrap(file, `${key}.local`, () => parseSize(v.local, 'local'));
      if (v.storeKeyFile !== undefined) o.storeKeyFile = keyFilePath(file, `${key}.storeKeyFile`, v.storeKeyFile);
      if (v.compress !== undefined) o.compress = flag(file, `${key}.compress`, v.compress);
      if (v.tlsCaFile !== undefined) o.tlsCaFile = caFilePath(file, `${key}.tlsCaFile`, v.tlsCaFile);
      // An entry that names its store and an option that store cannot use is a mistake
      // (the option would be dropped at attach without a word).
      const fits = o.store !== undefined ? optionsFor(o.store) : undefined;
      if (fits && o.tlsCaFile !== undefined && !fits.tlsCaFile) fail(file, `${key}.tlsCaFile`, `is for stores reached over TLS (rediss://), and ${key}.store is ${shownUri(o.store!)}: drop one of the two`);
      if (fits && o.storeKeyFile !== undefined && !fits.keyFile) fail(file, `${key}.storeKeyFile`, `has nothing to encrypt: ${key}.store is memory:, whose pages never leave the daemon; drop one of the two`);
      cfg.vms[name] = o;
    }
  }
  return cfg;
}

export function loadConfig(file: string | undefined): Config {
  if (!file) return defaultConfig();
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ElasticmemError(`config ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); give the path of a YAML config file (a commented example: vm-configs/elasticmem.example.yaml), or leave --config out for the defaults`, 'BAD_CONFIG');
  }
  return parseConfig(text, file);
}
