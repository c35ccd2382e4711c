/**
 * Stores opened by the daemon, shared by URI: two VMs on `file:///var/lib/em` use one
 * LMDB environment, two on the same Redis one client (keys are per VM anyway). Opening
 * fails fast when the store is unreachable: attach must not leave a VM half attached.
 */
import { ElasticmemError } from '../../native/errors.ts';
import type { PageStore } from '../../kvstore/types.ts';
import { scrub, shownUri } from './secrets.ts';

type OpenStore = (uri: string) => Promise<PageStore>;

// kvstore/index.ts is the store engineer's module; imported lazily so the CLI (which
// never opens a store) does not load store clients.
async function openStoreFn(): Promise<OpenStore> {
  const mod = await import('../../kvstore/index.ts');
  return (uri) => mod.openStore(uri);
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => { t = setTimeout(() => reject(new ElasticmemError(`${what} did not answer within ${ms} ms`, 'STORE_UNREACHABLE')), ms); }),
  ]).finally(() => clearTimeout(t));
}

export class StorePool {
  private open = new Map<string, { store: PageStore; refs: number }>();

  constructor(private timeoutMs = 5000) {}

  /** Open (or share) a store and prove it answers. Throws STORE_UNREACHABLE / BAD_STORE_URI. */
  async acquire(uri: string): Promise<PageStore> {
    const have = this.open.get(uri);
    if (have) {
      have.refs++;
      return have.store;
    }
    const openStore = await openStoreFn();
    let store: PageStore;
    try {
      store = await withTimeout(openStore(uri), this.timeoutMs, `store ${shownUri(uri)}`);
    } catch (e) {
      throw storeError(uri, e);
    }
    try {
      // A cheap round trip: connecting lazily is not proof the server is there.
      await withTimeout(store.usage('elasticmem-probe'), this.timeoutMs, `store ${store.uri}`);
    } catch (e) {
      await store.close().catch(() => undefined);
      throw storeError(uri, e);
    }
    // Another attach may have opened the same URI meanwhile.
    const raced = this.open.get(uri);
    if (raced) {
      await store.close().catch(() => undefined);
      raced.refs++;
      return raced.store;
    }
    this.open.set(uri, { store, refs: 1 });
    return store;
  }

  async release(uri: string): Promise<void> {
    const have = this.open.get(uri);
    if (!have) return;
    if (--have.refs > 0) return;
    this.open.delete(uri);
    await have.store.close().catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    for (const [uri, { store }] of this.open) {
      this.open.delete(uri);
      await store.close().catch(() => undefined);
    }
  }
}

/** The error attach reports; the password of the URI masked, wherever the message quotes it. */
function storeError(uri: string, e: unknown): ElasticmemError {
  const err = e as ElasticmemError;
  if (err?.code === 'BAD_STORE_URI' || err?.code === 'EM_NATIVE_MISSING') {
    err.message = scrub(err.message, [uri]);
    return err;
  }
  return new ElasticmemError(`store ${shownUri(uri)} is not reachable: ${scrub(err?.message ?? String(e), [uri])}; nothing was attached`, 'STORE_UNREACHABLE');
}
