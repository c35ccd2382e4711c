/**
 * Stores opened by the daemon, shared by how they are opened (store-setup.ts): two VMs
 * on `file:///var/lib/em` use one LMDB environment, two on the same Redis one client
 * (keys are per VM anyway); a VM with another encryption key (or none), or compressing
 * when the other does not, gets its own envelope. Opening fails fast
 * when the store is unreachable: attach must not leave a VM half attached.
 */
import { ElasticmemError } from '../../native/errors.ts';
import type { PageStore } from '../../kvstore/types.ts';
import { scrub, shownUri } from './secrets.ts';
import { setupKey, type StoreSetup } from './store-setup.ts';

type OpenStore = (setup: StoreSetup) => Promise<PageStore>;

// kvstore/index.ts is the store engineer's module; imported lazily so the CLI (which
// never opens a store) does not load store clients.
async function openStoreFn(): Promise<OpenStore> {
  const mod = await import('../../kvstore/index.ts');
  return ({ uri, ...options }) => mod.openStore(uri, options);
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

  /** Open (or share) a store and prove it answers. Throws STORE_UNREACHABLE / BAD_STORE_URI / BAD_STORE_KEY / BAD_TLS_CA. */
  async acquire(setup: StoreSetup): Promise<PageStore> {
    const { uri } = setup;
    const id = setupKey(setup);
    const have = this.open.get(id);
    if (have) {
      have.refs++;
      return have.store;
    }
    const openStore = await openStoreFn();
    let store: PageStore;
    const opening = openStore(setup);
    try {
      store = await withTimeout(opening, this.timeoutMs, `store ${shownUri(uri)}`);
    } catch (e) {
      // A store that opens after we gave up is nobody's: close it then.
      opening.then((late) => late.close(), () => undefined).catch(() => undefined);
      throw storeError(setup, e);
    }
    try {
      // A cheap round trip (one key that does not exist): connecting lazily is not proof
      // the server is there. Not usage(): on a full store that scans every key.
      await withTimeout(store.get('elasticmem-probe', [0]), this.timeoutMs, `store ${store.uri}`);
    } catch (e) {
      await store.close().catch(() => undefined);
      throw storeError(setup, e);
    }
    // Another attach may have opened the same URI meanwhile.
    const raced = this.open.get(id);
    if (raced) {
      await store.close().catch(() => undefined);
      raced.refs++;
      return raced.store;
    }
    this.open.set(id, { store, refs: 1 });
    return store;
  }

  async release(setup: StoreSetup): Promise<void> {
    const id = setupKey(setup);
    const have = this.open.get(id);
    if (!have) return;
    if (--have.refs > 0) return;
    this.open.delete(id);
    await have.store.close().catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    for (const [id, { store }] of this.open) {
      this.open.delete(id);
      await store.close().catch(() => undefined);
    }
  }
}

/** The error attach reports; the password of the URI masked, wherever the message quotes it. */
function storeError({ uri, tlsCaFile }: StoreSetup, e: unknown): ElasticmemError {
  const err = e as ElasticmemError;
  if (err?.code === 'BAD_STORE_URI' || err?.code === 'BAD_STORE_KEY' || err?.code === 'BAD_TLS_CA' || err?.code === 'EM_NATIVE_MISSING') {
    err.message = scrub(err.message, [uri]);
    return err;
  }
  const why = scrub(err?.message ?? String(e), [uri]);
  // A certificate signed by a CA nobody told us to trust: say how to trust it. (Not for
  // a name the certificate does not cover: a CA file cannot help there.)
  const untrusted = /self[- ]signed certificate|unable to (verify|get local issuer)/i.test(why);
  const hint = untrusted && !tlsCaFile ? ' (a store with a private CA: give its certificate with --tls-ca FILE, or tlsCaFile in the config)' : '';
  return new ElasticmemError(`store ${shownUri(uri)} is not reachable: ${why}${hint}; nothing was attached`, 'STORE_UNREACHABLE');
}
