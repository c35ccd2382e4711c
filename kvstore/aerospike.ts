/**
 * `aerospike://h1:p1[,h2:p2]/namespace[/set]` — pages in Aerospike through the official
 * client, one batchRead / batchWrite per batch (removes: a batchWrite of BATCH_REMOVE
 * records).
 *
 * Records: key (namespace, set, "<vm tag>:<page>") with bins vm (string), pg (page
 * number) and v (the envelope). list/usage/dropVm scan the set with a filter
 * expression vm == <vm>, so one VM never sees another's pages; they need no secondary
 * index and are only used for recovery and reporting.
 *
 * No real Aerospike server can be installed on this machine (only npm and Debian apt are
 * reachable): the conformance suite runs against a real server only when AEROSPIKE_HOSTS
 * is set (test/kvstore-aerospike.test.ts), and always against a MOCK server that speaks
 * the wire protocol (test/kvstore-aerospike-mock.test.ts, test/helpers/aerospike-mock.ts).
 */
import { createRequire } from 'node:module';
import type { StoreUsage } from './types.ts';
import { type RawStore, type NetTimeouts, DEFAULT_TIMEOUTS, vmTag } from './raw.ts';
import { ElasticmemError, unavailable, describe, withTimeout, badUri } from './errors.ts';
import type { HostPort } from './uri.ts';

// The client is a native addon; load it only when an aerospike:// store is opened.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;

export interface AerospikeSpec {
  hosts: HostPort[];
  namespace: string;
  set: string;
  username?: string;
  password?: string;
}

export class AerospikeStore implements RawStore {
  readonly capabilities = { persistent: true, maxBatch: 1024 };
  private closed = false;

  private constructor(readonly uri: string, private readonly as: Any, private readonly client: Any, private readonly spec: AerospikeSpec, private readonly t: NetTimeouts) {}

  static async open(uri: string, spec: AerospikeSpec, t: NetTimeouts = DEFAULT_TIMEOUTS): Promise<AerospikeStore> {
    let as: Any;
    try {
      as = createRequire(import.meta.url)('aerospike');
    } catch (e) {
      throw new ElasticmemError(`the aerospike client cannot be loaded: ${describe(e)} (run npm install)`, 'STORE_UNAVAILABLE');
    }
    // The C client logs seed failures to stdout by default; errors reach the caller typed instead.
    try { as.setDefaultLogging?.({ level: as.log.OFF }); } catch { /* older clients */ }
    const policy = { totalTimeout: t.opTimeoutMs, socketTimeout: t.opTimeoutMs, maxRetries: 1 };
    const config: Any = {
      hosts: spec.hosts.map((h) => ({ addr: h.host, port: h.port })),
      connTimeoutMs: t.connectTimeoutMs,
      loginTimeoutMs: t.connectTimeoutMs,
      policies: { batch: policy, batchWrite: policy, read: policy, write: policy, remove: policy, scan: { totalTimeout: 0, socketTimeout: t.opTimeoutMs * 6 } },
      log: { level: as.log.OFF },
    };
    if (spec.username) { config.user = spec.username; config.password = spec.password ?? ''; }
    let client: Any;
    try {
      client = await withTimeout(as.connect(config) as Promise<Any>, t.connectTimeoutMs * 2 + 1000, `connecting to aerospike at ${where(spec)}`);
    } catch (e) {
      unrefAfterFailedConnect();
      throw mapError(as, e, `cannot connect to aerospike at ${where(spec)} (is asd running and reachable?)`);
    }
    const store = new AerospikeStore(uri, as, client, spec, t);
    await store.checkNamespace();
    return store;
  }

  /**
   * A namespace the cluster does not have fails every batch with a bare "Batch failed"
   * (-16): refuse it at open instead, naming the namespaces there are. Best effort: when
   * the info request itself fails, the first operation reports the problem.
   */
  private async checkNamespace(): Promise<void> {
    let have: string[];
    try {
      const resp: string = await withTimeout(this.client.infoAny('namespaces') as Promise<string>, this.t.opTimeoutMs, `${this.uri}: info namespaces`);
      have = (/(?:^|\n)namespaces\t([^\n]*)/.exec(resp)?.[1] ?? '').split(';').filter(Boolean);
    } catch {
      return;
    }
    if (have.length === 0 || have.includes(this.spec.namespace)) return;
    await this.close();
    throw badUri(`the Aerospike cluster at ${where(this.spec)} has no namespace '${this.spec.namespace}' (it has: ${have.join(', ')})`,
      `aerospike://${where(this.spec)}/${have[0]}/${this.spec.set}`);
  }

  private key(tag: string, page: number): Any {
    return new this.as.Key(this.spec.namespace, this.spec.set, `${tag}:${page}`);
  }

  async getRaw(vm: string, pages: readonly number[]): Promise<(Buffer | null)[]> {
    if (pages.length === 0) return [];
    const tag = vmTag(vm);
    const recs = pages.map((p) => ({ type: this.as.batchType.BATCH_READ, key: this.key(tag, p), bins: ['v'] }));
    const res: Any[] = await this.run(() => this.client.batchRead(recs), 'batchRead');
    return res.map((r, i) => {
      if (r.status === this.as.status.OK) {
        const v = r.record?.bins?.v;
        if (!Buffer.isBuffer(v)) throw new ElasticmemError(`aerospike record for page ${pages[i]} of vm '${vm}' has no bytes bin 'v'`, 'STORE_INTEGRITY');
        return v;
      }
      if (r.status === this.as.status.ERR_RECORD_NOT_FOUND) return null;
      throw mapStatus(this.as, r.status, `${this.uri}: batchRead page ${pages[i]}`);
    });
  }

  async putRaw(vm: string, pages: readonly number[], values: readonly Buffer[]): Promise<void> {
    if (pages.length === 0) return;
    const tag = vmTag(vm);
    const op = this.as.operations;
    const recs = pages.map((p, i) => ({
      type: this.as.batchType.BATCH_WRITE,
      key: this.key(tag, p),
      ops: [op.write('vm', vm), op.write('pg', p), op.write('v', values[i])],
    }));
    const res: Any[] = await this.run(() => this.client.batchWrite(recs), 'batchWrite');
    for (let i = 0; i < res.length; i++)
      if (res[i].status !== this.as.status.OK) throw mapStatus(this.as, res[i].status, `${this.uri}: batchWrite page ${pages[i]}`);
  }

  async delete(vm: string, pages: readonly number[]): Promise<void> {
    if (pages.length === 0) return;
    const tag = vmTag(vm);
    await this.removeKeys(pages.map((p) => this.key(tag, p)));
  }

  /**
   * Removes as a batchWrite of BATCH_REMOVE records, not client.batchRemove(): that one
   * runs the synchronous C batch on a libuv worker thread and, when any record fails,
   * rejects with AEROSPIKE_BATCH_FAILED alone, hiding each record's code (a device
   * overload, which the pager should retry, came out as a plain STORE_ERROR).
   */
  private async removeKeys(keys: Any[]): Promise<void> {
    for (let i = 0; i < keys.length; i += 1024) {
      const recs = keys.slice(i, i + 1024).map((key) => ({ type: this.as.batchType.BATCH_REMOVE, key }));
      const res: Any[] = await this.run(() => this.client.batchWrite(recs), 'batchRemove');
      for (const r of res)
        if (r.status !== this.as.status.OK && r.status !== this.as.status.ERR_RECORD_NOT_FOUND) throw mapStatus(this.as, r.status, `${this.uri}: batchRemove`);
    }
  }

  /** Records of one VM (or all) from a filtered scan of the set. */
  private async scan(vm: string | undefined, select: string[]): Promise<Any[]> {
    const exp = this.as.exp;
    const scan = this.client.scan(this.spec.namespace, this.spec.set, select.length ? { select } : { nobins: true });
    const policy: Any = {};
    if (vm !== undefined) policy.filterExpression = exp.eq(exp.binStr('vm'), exp.str(vm));
    // A scan reads the whole set: its own policy bounds it (socket idle time, no total),
    // the outer bound only catches a client that never answers.
    return this.run(() => scan.results(policy), 'scan', SCAN_BOUND_MS);
  }

  async dropVm(vm: string): Promise<void> {
    const recs = await this.scan(vm, ['pg']);
    await this.removeKeys(recs.map((r) => r.key));
  }

  async list(vm: string): Promise<number[]> {
    return (await this.scan(vm, ['pg'])).map((r) => Number(r.bins.pg));
  }

  async usage(vm?: string): Promise<StoreUsage> {
    const recs = await this.scan(vm, ['v']);
    return { pages: recs.length, bytes: recs.reduce((a, r) => a + (Buffer.isBuffer(r.bins?.v) ? r.bins.v.length : 0), 0) };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Never close from inside a client callback: the client's native listeners keep using
    // the client (its log, its command) after the JavaScript callback returns, and the
    // promise continuations of that callback (which may end here) run before it returns.
    // Closing there freed the client under the listener: SIGSEGV / "glibc detected an
    // invalid stdio handle" right after a scan or query failed on a down server. Waiting
    // one macrotask lets the native callback unwind first.
    await new Promise<void>((resolve) => setImmediate(resolve));
    try { await this.client.close(false); } catch { /* already closed */ }
  }

  private async run<T>(fn: () => Promise<T>, what: string, boundMs = this.t.opTimeoutMs * 2): Promise<T> {
    if (this.closed) throw new ElasticmemError(`the store ${this.uri} is closed`, 'STORE_CLOSED');
    try {
      return await withTimeout(fn(), boundMs, `${this.uri}: ${what}`);
    } catch (e) {
      throw mapError(this.as, e, `${this.uri}: ${what}`);
    }
  }
}

/** Outer bound of a scan (list, dropVm, usage of a large set take long; see scan()). */
const SCAN_BOUND_MS = 10 * 60_000;

/**
 * A failed connect leaves the client's event loop referenced (client.js registers it
 * and only close() unreferences it), which keeps the process alive: unreference it, so
 * a CLI command or a test that could not connect still exits. Not releaseEventLoop():
 * that is final, and a later openStore would fail.
 */
function unrefAfterFailedConnect(): void {
  try {
    (createRequire(import.meta.url)('aerospike/lib/event_loop') as { unreferenceEventLoop(): void }).unreferenceEventLoop();
  } catch { /* not initialised */ }
}

function where(spec: AerospikeSpec): string {
  return spec.hosts.map((h) => `${h.host}:${h.port}`).join(',');
}

const UNAVAILABLE = ['ERR_TIMEOUT', 'ERR_CONNECTION', 'ERR_CLUSTER', 'ERR_INVALID_NODE', 'ERR_NO_MORE_CONNECTIONS', 'ERR_ASYNC_CONNECTION', 'ERR_INVALID_HOST', 'ERR_TLS_ERROR', 'ERR_CLUSTER_CHANGE', 'ERR_DEVICE_OVERLOAD'];

function mapStatus(as: Any, status: number, what: string): ElasticmemError {
  const name = Object.keys(as.status).find((k) => as.status[k] === status) ?? `status ${status}`;
  if (status === as.status.ERR_SERVER_FULL) return new ElasticmemError(`store full: ${what}: ${name}`, 'STORE_FULL');
  if (UNAVAILABLE.some((k) => as.status[k] === status)) return unavailable(`${what}: ${name}`);
  return new ElasticmemError(`store error: ${what}: ${name}`, 'STORE_ERROR');
}

function mapError(as: Any, e: unknown, what: string): ElasticmemError {
  if (e instanceof ElasticmemError) return e;
  const code = (e as { code?: unknown })?.code;
  if (typeof code === 'number') {
    const m = mapStatus(as, code, what);
    m.message += ` (${describe(e)})`;
    return m;
  }
  return unavailable(what, e);
}
