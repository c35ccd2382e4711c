/**
 * `redis://host:port[/db]`, `rediss://` (TLS), `redis+cluster://h1:p1,h2:p2` — pages in
 * Redis through our lean RESP client (resp-client.ts; the cluster's slot routing and
 * redirections in redis-cluster.ts), one command per batch (per slot group in a cluster).
 *
 * Keys: em:{<vm tag>:<group>}:<page>, group = floor(page / 64). The hash tag keeps 64
 * neighbouring pages of one VM in one cluster slot, so an eviction or prefetch batch of
 * nearby pages is one MSET/MGET on one node; a scattered batch is split per tag and the
 * parts go out at once (the client pipelines commands issued in the same tick). On a
 * single server the tag is harmless and the code path is the same. The VM tag has no
 * ':' '{' '}' or glob characters (raw.ts vmTag), so "em:{<tag>:*" matches exactly one
 * VM's pages: list/usage/dropVm use SCAN with that pattern, on every master of a cluster.
 *
 * Failure semantics: the offline queue is disabled and every command has a timeout, so
 * while the server is down or paused each batch fails within opTimeoutMs with
 * STORE_UNAVAILABLE (the pager retries with backoff) instead of hanging; the RESP
 * client reconnects on the next command once the server answers again, so the next
 * batch after recovery succeeds (the pager's retries supply the backoff).
 */
import { createClient, RESP_TYPES } from 'redis';
import { rootCertificates as tlsRoots } from 'node:tls';
import type { StoreUsage } from './types.ts';
import { type RawStore, type NetTimeouts, DEFAULT_TIMEOUTS, vmTag } from './raw.ts';
import { ElasticmemError, unavailable, describe, withTimeout } from './errors.ts';
import type { HostPort } from './uri.ts';
import { RespClient, RespError, type InPlaceArg, type RespArg } from './resp-client.ts';
import { ClusterClient } from './redis-cluster.ts';

export const GROUP = 64;

export interface RedisSpec {
  tls: boolean;
  nodes: HostPort[];
  cluster: boolean;
  db?: number;
  username?: string;
  password?: string;
  /** PEM CA certificate(s) to trust for rediss:// besides the system's. */
  ca?: Buffer;
  /** Single server: our lean RESP client (default, see resp-client.ts) or the `redis` package. */
  client?: 'resp' | 'node-redis';
}

type Arg = string | Buffer;
/** What we need from a client or a cluster: send one command routed by its first key. */
interface Conn {
  send<T>(firstKey: string | undefined, readonly: boolean, args: Arg[]): Promise<T>;
  /** The connection enforces the op timeout itself (RespClient): no second timer needed. */
  ownDeadline?: boolean;
  /** RespClient only: send with in-place arguments (written into the frame, see putRawInto). */
  sendInPlace?<T>(firstKey: string, args: RespArg[]): Promise<T>;
  /** One client per master (the single client itself when not a cluster). */
  masters(): Promise<Conn[]>;
  close(): Promise<void>;
}

const BUFFERS = { [RESP_TYPES.BLOB_STRING]: Buffer } as const;

export function pageKey(tag: string, page: number): string {
  return `em:{${tag}:${Math.floor(page / GROUP)}}:${page}`;
}
function vmPattern(tag: string): string {
  return `em:{${tag}:*`;
}
function pageOfKey(key: string): number {
  return Number(key.slice(key.lastIndexOf(':') + 1));
}

export class RedisStore implements RawStore {
  readonly capabilities: { persistent: boolean; maxBatch: number };
  private closed = false;

  private constructor(readonly uri: string, private readonly conn: Conn, private readonly cluster: boolean, persistent: boolean, private readonly opTimeoutMs: number) {
    this.capabilities = { persistent, maxBatch: 1024 };
  }

  static async open(uri: string, spec: RedisSpec, t: NetTimeouts = DEFAULT_TIMEOUTS): Promise<RedisStore> {
    const conn = spec.cluster ? await connectCluster(spec, t) : spec.client === 'node-redis' ? await connectSingle(spec, t) : await connectResp(spec, t);
    // Persistence is asked, not guessed: AOF on means acknowledged writes survive a
    // restart. Of every master of a cluster: pages spread over all of them.
    let persistent = false;
    try {
      const answers = await Promise.all((await conn.masters()).map(async (m) => {
        const r = await withTimeout(m.send<unknown>(undefined, true, ['CONFIG', 'GET', 'appendonly']), t.opTimeoutMs, 'CONFIG GET');
        // RESP2 gives [name, value], RESP3 / the client's transform a map.
        return String(Array.isArray(r) ? r[1] : (r as Record<string, unknown>)?.appendonly);
      }));
      persistent = answers.length > 0 && answers.every((v) => v === 'yes');
    } catch {
      persistent = false; // CONFIG disabled (managed Redis): do not claim persistence
    }
    return new RedisStore(uri, conn, spec.cluster, persistent, t.opTimeoutMs);
  }

  async getRaw(vm: string, pages: readonly number[]): Promise<(Buffer | null)[]> {
    if (pages.length === 0) return [];
    const tag = vmTag(vm);
    if (!this.cluster || oneGroup(pages)) {
      // One server, or one slot group of a cluster: one MGET, routed by its first key.
      const args: Arg[] = new Array(pages.length + 1);
      args[0] = 'MGET';
      for (let i = 0; i < pages.length; i++) args[i + 1] = pageKey(tag, pages[i]!);
      return this.run(() => this.conn.send<(Buffer | null)[]>(args[1] as string, true, args), 'MGET');
    }
    const out: (Buffer | null)[] = new Array(pages.length);
    await Promise.all(bySlot(tag, pages).map(async ({ keys, idx }) => {
      const r = await this.run(() => this.conn.send<(Buffer | null)[]>(keys[0], true, ['MGET', ...keys]), 'MGET');
      for (let j = 0; j < idx.length; j++) out[idx[j]!] = r[j] ?? null;
    }));
    return out;
  }

  async putRaw(vm: string, pages: readonly number[], values: readonly Buffer[]): Promise<void> {
    if (pages.length === 0) return;
    const tag = vmTag(vm);
    if (!this.cluster || oneGroup(pages)) {
      const args: Arg[] = new Array(pages.length * 2 + 1);
      args[0] = 'MSET';
      for (let i = 0; i < pages.length; i++) {
        args[2 * i + 1] = pageKey(tag, pages[i]!);
        args[2 * i + 2] = values[i]!;
      }
      await this.run(() => this.conn.send(args[1] as string, false, args), 'MSET');
      return;
    }
    await Promise.all(bySlot(tag, pages).map(({ keys, idx }) => {
      const args: Arg[] = ['MSET'];
      for (let j = 0; j < keys.length; j++) args.push(keys[j]!, values[idx[j]!]!);
      return this.run(() => this.conn.send(keys[0], false, args), 'MSET');
    }));
  }

  /**
   * putRaw with values written straight into the command frame (our RESP client): one
   * MSET whose values the envelope encodes in place. In a cluster only when the batch is
   * one slot group (one MSET, so a throwing fill throws before anything is sent; a MOVED
   * or ASK resend encodes it again, before this call settles). Elsewhere the values are
   * filled into one buffer and sent by putRaw.
   */
  async putRawInto(vm: string, pages: readonly number[], size: number, fill: (i: number, dst: Buffer) => void): Promise<void> {
    if (pages.length === 0) return;
    const sendInPlace = this.conn.sendInPlace;
    if (!sendInPlace || (this.cluster && !oneGroup(pages))) {
      const all = Buffer.allocUnsafe(size * pages.length);
      const values: Buffer[] = new Array(pages.length);
      for (let i = 0; i < pages.length; i++) fill(i, (values[i] = all.subarray(i * size, (i + 1) * size)));
      return this.putRaw(vm, pages, values);
    }
    const tag = vmTag(vm);
    const args: RespArg[] = new Array(pages.length * 2 + 1);
    args[0] = 'MSET';
    for (let i = 0; i < pages.length; i++) {
      args[2 * i + 1] = pageKey(tag, pages[i]!);
      args[2 * i + 2] = new InPlaceValue(size, i, fill);
    }
    await this.run(() => sendInPlace(args[1] as string, args), 'MSET');
  }

  async delete(vm: string, pages: readonly number[]): Promise<void> {
    if (pages.length === 0) return;
    const tag = vmTag(vm);
    await Promise.all(bySlot(tag, pages, !this.cluster).map(({ keys }) =>
      this.run(() => this.conn.send(keys[0], false, ['UNLINK', ...keys]), 'UNLINK')));
  }

  async dropVm(vm: string): Promise<void> {
    await this.scan(vmPattern(vmTag(vm)), async (node, keys) => {
      // Keys of one scan page can span slots: delete per key group on that node.
      const groups = new Map<string, string[]>();
      for (const k of keys) {
        const tag = k.slice(0, k.indexOf('}') + 1);
        let g = groups.get(tag);
        if (!g) groups.set(tag, (g = []));
        g.push(k);
      }
      await Promise.all([...groups.values()].map((g) => this.run(() => node.send(g[0], false, ['UNLINK', ...g]), 'UNLINK')));
    });
  }

  async list(vm: string): Promise<number[]> {
    const out: number[] = [];
    await this.scan(vmPattern(vmTag(vm)), async (_node, keys) => { for (const k of keys) out.push(pageOfKey(k)); });
    return out;
  }

  async usage(vm?: string): Promise<StoreUsage> {
    let pages = 0;
    let bytes = 0;
    await this.scan(vm === undefined ? 'em:{*' : vmPattern(vmTag(vm)), async (node, keys) => {
      pages += keys.length;
      const lens = await Promise.all(keys.map((k) => this.run(() => node.send<number>(k, true, ['STRLEN', k]), 'STRLEN')));
      for (const l of lens) bytes += Number(l);
    });
    return { pages, bytes };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.conn.close();
  }

  /**
   * SCAN every master for `pattern`, handing each page of keys to `each`, every key once:
   * SCAN may return a key more than once (a table rehashed between calls), which counted
   * pages twice in list/usage (seen as 517 pages of 516 after concurrent puts).
   */
  private async scan(pattern: string, each: (node: Conn, keys: string[]) => Promise<void>): Promise<void> {
    const masters = await this.run(() => this.conn.masters(), 'cluster topology');
    for (const node of masters) {
      const seen = new Set<string>();
      let cursor = '0';
      do {
        const [next, keys] = await this.run(
          () => node.send<[Buffer | string, (Buffer | string)[]]>(undefined, true, ['SCAN', cursor, 'MATCH', pattern, 'COUNT', '1000']),
          'SCAN',
        );
        cursor = String(next);
        const fresh: string[] = [];
        for (const k of keys) {
          const key = String(k);
          if (!seen.has(key)) { seen.add(key); fresh.push(key); }
        }
        if (fresh.length) await each(node, fresh);
      } while (cursor !== '0');
    }
  }

  /**
   * Run one command with our own deadline: the client's command timeout only covers the
   * wait to be written, not the wait for the reply from a frozen server. A timed-out
   * command stays queued on its connection; replies keep their order, so a later put of
   * the same page (always on the same connection) still lands after it.
   */
  private run<T>(fn: () => Promise<T>, what: string): Promise<T> {
    if (this.closed) return Promise.reject(new ElasticmemError(`the store ${this.uri} is closed`, 'STORE_CLOSED'));
    if (this.conn.ownDeadline) return fn().catch((e) => { throw mapError(e, `${this.uri}: ${what}`); });
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(unavailable(`${this.uri}: ${what} got no reply within ${this.opTimeoutMs} ms`)), this.opTimeoutMs);
      fn().then(
        (v) => { clearTimeout(timer); resolve(v); },
        (e) => { clearTimeout(timer); reject(mapError(e, `${this.uri}: ${what}`)); },
      );
    });
  }
}

/** Value i of a putRawInto batch, filled in place when its MSET is encoded. */
class InPlaceValue implements InPlaceArg {
  constructor(readonly size: number, private readonly i: number, private readonly write: (i: number, dst: Buffer) => void) {}
  fill(dst: Buffer): void { this.write(this.i, dst); }
}

function oneGroup(pages: readonly number[]): boolean {
  const g = Math.floor(pages[0]! / GROUP);
  for (let i = 1; i < pages.length; i++) if (Math.floor(pages[i]! / GROUP) !== g) return false;
  return true;
}

/** Group pages by hash tag (one cluster slot each); `one` = a single group (non-cluster). */
function bySlot(tag: string, pages: readonly number[], one = false): { keys: string[]; idx: number[] }[] {
  if (one) return [{ keys: pages.map((p) => pageKey(tag, p)), idx: pages.map((_, i) => i) }];
  const groups = new Map<number, { keys: string[]; idx: number[] }>();
  for (let i = 0; i < pages.length; i++) {
    const g = Math.floor(pages[i]! / GROUP);
    let e = groups.get(g);
    if (!e) groups.set(g, (e = { keys: [], idx: [] }));
    e.keys.push(pageKey(tag, pages[i]!));
    e.idx.push(i);
  }
  return [...groups.values()];
}

export function mapError(e: unknown, what: string): ElasticmemError {
  if (e instanceof ElasticmemError) return e;
  const msg = describe(e);
  const name = e instanceof RespError ? 'ErrorReply' : (e as Error)?.constructor?.name ?? '';
  if (name === 'ErrorReply' || name === 'SimpleError' || name === 'BlobError') {
    if (/^OOM/.test(msg)) return new ElasticmemError(`store full: ${what}: ${msg}`, 'STORE_FULL');
    if (/^(LOADING|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|BUSY|READONLY)/.test(msg)) return unavailable(what, e);
    if (/^(NOAUTH|WRONGPASS|NOPERM)/.test(msg))
      return new ElasticmemError(`store refused the credentials: ${what}: ${msg} (check user:password in the URI)`, 'STORE_UNAVAILABLE');
    return new ElasticmemError(`store error: ${what}: ${msg}`, 'STORE_ERROR');
  }
  if (name === 'TimeoutError' || (e as Error)?.name === 'TimeoutError') return unavailable(`${what} timed out`);
  return unavailable(what, e);
}

function socketOptions(spec: RedisSpec, t: NetTimeouts, everReady: () => boolean) {
  return {
    tls: spec.tls as false, // typed as a union in the client; true selects TLS
    ...(spec.tls && spec.ca ? { ca: [...tlsRoots, spec.ca.toString()] } : {}),
    connectTimeout: t.connectTimeoutMs,
    noDelay: true,
    keepAlive: true,
    // Before the first connection: give up at once (openStore reports STORE_UNAVAILABLE).
    // Afterwards: retry forever with capped backoff; batches fail fast meanwhile.
    reconnectStrategy: (retries: number, cause: Error) =>
      everReady() ? Math.min(50 * 2 ** Math.min(retries, 6), 2000) : cause,
  };
}

async function connectResp(spec: RedisSpec, t: NetTimeouts): Promise<Conn> {
  const node = spec.nodes[0]!;
  const client = new RespClient({ host: node.host, port: node.port, tls: spec.tls, ca: spec.ca, username: spec.username, password: spec.password, db: spec.db }, t);
  try {
    await client.connect();
  } catch (e) {
    client.close();
    throw mapError(e, `cannot connect to redis at ${node.host}:${node.port} (is redis-server running and reachable?)`);
  }
  const conn: Conn = {
    send: <T>(_k: string | undefined, _ro: boolean, args: Arg[]) => client.send(args) as Promise<T>,
    sendInPlace: <T>(_k: string, args: RespArg[]) => client.send(args) as Promise<T>,
    ownDeadline: true,
    masters: async () => [conn],
    close: async () => client.close(),
  };
  return conn;
}

async function connectSingle(spec: RedisSpec, t: NetTimeouts): Promise<Conn> {
  const node = spec.nodes[0]!;
  let ready = false;
  const client = createClient({
    socket: { host: node.host, port: node.port, ...socketOptions(spec, t, () => ready) },
    username: spec.username,
    password: spec.password,
    database: spec.db ?? 0,
    disableOfflineQueue: true,
    commandOptions: { typeMapping: BUFFERS, timeout: t.opTimeoutMs },
  });
  client.on('error', () => { /* reported through the failing command; keep the process alive */ });
  try {
    await withTimeout(client.connect(), t.connectTimeoutMs + 1000, `connecting to ${node.host}:${node.port}`);
  } catch (e) {
    client.destroy();
    throw mapError(e, `cannot connect to redis at ${node.host}:${node.port} (is redis-server running and reachable?)`);
  }
  ready = true;
  const conn: Conn = {
    send: <T>(_k: string | undefined, _ro: boolean, args: Arg[]) => client.sendCommand(args) as Promise<T>,
    masters: async () => [conn],
    close: async () => { try { await client.close(); } catch { client.destroy(); } },
  };
  return conn;
}

async function connectCluster(spec: RedisSpec, t: NetTimeouts): Promise<Conn> {
  const cluster = new ClusterClient(spec.nodes, { tls: spec.tls, ca: spec.ca, username: spec.username, password: spec.password }, t);
  const where = spec.nodes.map((n) => `${n.host}:${n.port}`).join(',');
  try {
    await cluster.connect();
  } catch (e) {
    cluster.close();
    throw mapError(e, `cannot connect to the redis cluster at ${where} (are the nodes up, with cluster-enabled yes?)`);
  }
  const wrap = (c: RespClient): Conn => ({
    send: <T>(_k: string | undefined, _ro: boolean, args: Arg[]) => c.send(args) as Promise<T>,
    ownDeadline: true,
    masters: async () => [],
    close: async () => {},
  });
  return {
    send: <T>(k: string | undefined, _ro: boolean, args: Arg[]) => cluster.send(k, args) as Promise<T>,
    sendInPlace: <T>(k: string, args: RespArg[]) => cluster.send(k, args) as Promise<T>,
    ownDeadline: true,
    masters: async () => cluster.masters().map(wrap),
    close: async () => cluster.close(),
  };
}
