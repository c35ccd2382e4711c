/**
 * openStore(uri): the one entry to the page stores. Parses the URI (kvstore/uri.ts),
 * connects the adapter, and wraps every adapter except `memory:` in the page envelope
 * (integrity check, optional compression and encryption: kvstore/envelope.ts).
 * `memory:` lives in the native data plane and is used by the pager without JavaScript.
 *
 *   const store = await openStore('redis://127.0.0.1:6379/0', { keyFile: '/etc/elasticmem/store.key' });
 */
import fs from 'node:fs';
import type { PageStore } from './types.ts';
import { ElasticmemError } from './errors.ts';
import { parseStoreUri, redactUri, type StoreSpec } from './uri.ts';
import { EnvelopeStore, loadKeyFile } from './envelope.ts';
import { DEFAULT_TIMEOUTS, type NetTimeouts, type RawStore } from './raw.ts';

export { PAGE_SIZE, type PageStore, type StoreCapabilities, type StoreUsage } from './types.ts';
export { parseStoreUri, redactUri, type StoreSpec } from './uri.ts';
export { EnvelopeStore, loadKeyFile } from './envelope.ts';

export interface OpenStoreOptions {
  /** Compress pages: LZ4 inside `memory:`, deflate (level 1, only when it shrinks) in the envelope elsewhere. */
  compress?: boolean;
  /** AES-256-GCM key file for encryption at rest (`--store-key FILE`); ignored by `memory:`, which never leaves the monitor. */
  keyFile?: string;
  /** Or the key itself (32 bytes). */
  key?: Buffer;
  /** Network timeouts (default: connect 2 s, operation 5 s). */
  connectTimeoutMs?: number;
  opTimeoutMs?: number;
  /** rediss:// and rediss+cluster://: a PEM file of CA certificates to trust besides the system's (private CAs). */
  tlsCaFile?: string;
  /** redis:// only: 'resp' (default, the lean hot-path client) or 'node-redis' (the `redis` package), for comparison. */
  redisClient?: 'resp' | 'node-redis';
}

export async function openStore(uri: string, options: OpenStoreOptions = {}): Promise<PageStore> {
  const spec = parseStoreUri(uri);
  // Read the key before connecting: a bad key file changes nothing.
  const key = options.key ?? (options.keyFile ? loadKeyFile(options.keyFile) : undefined);
  if (spec.kind === 'memory') {
    const { MemoryStore } = await import('./memory.ts');
    return new MemoryStore({ compress: options.compress });
  }
  const raw = await openRaw(spec, redactUri(uri.trim()), {
    connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_TIMEOUTS.connectTimeoutMs,
    opTimeoutMs: options.opTimeoutMs ?? DEFAULT_TIMEOUTS.opTimeoutMs,
  }, { redisClient: options.redisClient, ca: options.tlsCaFile ? readCa(options.tlsCaFile) : undefined });
  return new EnvelopeStore(raw, { compress: options.compress, key });
}

/** The adapter without the envelope (tests use it to tamper with stored values). */
export interface RawOptions { redisClient?: 'resp' | 'node-redis'; ca?: Buffer }

function readCa(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new ElasticmemError(`cannot read the TLS CA file '${file}': ${(e as Error).message}; give the PEM file of the CA that signed the store's certificate`, 'BAD_TLS_CA');
  }
}

export async function openRaw(spec: Exclude<StoreSpec, { kind: 'memory' }>, uri: string, t: NetTimeouts = DEFAULT_TIMEOUTS, o: RawOptions = {}): Promise<RawStore> {
  switch (spec.kind) {
    case 'file': {
      const { FileStore } = await import('./file.ts');
      return FileStore.open(spec.path);
    }
    case 'redis': {
      const { RedisStore } = await import('./redis.ts');
      return RedisStore.open(uri, { tls: spec.tls, nodes: [{ host: spec.host, port: spec.port }], cluster: false, db: spec.db, username: spec.username, password: spec.password, client: o.redisClient, ca: o.ca }, t);
    }
    case 'redis-cluster': {
      const { RedisStore } = await import('./redis.ts');
      return RedisStore.open(uri, { tls: spec.tls, nodes: spec.nodes, cluster: true, username: spec.username, password: spec.password, ca: o.ca }, t);
    }
    case 'memcached': {
      const { MemcachedStore } = await import('./memcached.ts');
      return MemcachedStore.open(uri, spec.servers, t);
    }
    case 'aerospike': {
      const { AerospikeStore } = await import('./aerospike.ts');
      return AerospikeStore.open(uri, spec, t);
    }
  }
}
