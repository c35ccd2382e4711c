/**
 * How a VM's store is opened: its URI and the options attach takes with it (key file,
 * compression, a private CA). One value, so every place that opens, shares, records or
 * re-opens a VM's store passes all of them: a store re-opened after a daemon restart
 * without its key could not read the pages, and one re-opened without its CA could not
 * connect.
 */
import fs from 'node:fs';
import { ElasticmemError } from '../../native/errors.ts';
import { parseStoreUri } from '../../kvstore/uri.ts';
import type { Config, VmOverride } from './config.ts';
import { shownUri } from './secrets.ts';

export interface StoreSetup {
  /** As given, password included: only to open the store and for the state file. Never shown. */
  uri: string;
  /** AES-256-GCM key file (absolute path): pages encrypted at rest. Never with memory:. */
  keyFile?: string;
  /** Pages compressed: LZ4 inside memory:, deflate (only when it shrinks a page) elsewhere. */
  compress?: boolean;
  /** rediss:// stores: a PEM file of CA certificates to trust besides the system's (absolute path). */
  tlsCaFile?: string;
}

/** What the caller asked for; absent: the config's (per VM, else default). null: none, whatever the config says. */
export interface StoreArgs {
  uri?: string;
  keyFile?: string | null;
  compress?: boolean;
  tlsCaFile?: string | null;
}

/** Which options a store can use: a key has nothing to encrypt in memory:, a CA file is only for TLS. */
export function optionsFor(uri: string): { keyFile: boolean; tlsCaFile: boolean } {
  const spec = parseStoreUri(uri);
  return { keyFile: spec.kind !== 'memory', tlsCaFile: (spec.kind === 'redis' || spec.kind === 'redis-cluster') && spec.tls };
}

/**
 * Why an option the caller gave cannot go with the store (null: it can; optionsFor).
 * The CLI and the daemon refuse alike; `store` names the store in the message
 * (default: --store URI).
 */
export function optionMisfit(uri: string, given: Pick<StoreArgs, 'keyFile' | 'tlsCaFile'>, store = `--store ${shownUri(uri)}`): string | null {
  const fits = optionsFor(uri);
  if (typeof given.keyFile === 'string' && !fits.keyFile) {
    return `--store-key has nothing to encrypt with ${store} (memory: keeps pages in the daemon, they never leave it); use a store pages go to, e.g. --store file:///var/lib/elasticmem or redis://...`;
  }
  if (typeof given.tlsCaFile === 'string' && !fits.tlsCaFile) {
    return `--tls-ca is for stores reached over TLS (rediss://, rediss+cluster://), not ${store}: drop --tls-ca or use a rediss:// store`;
  }
  return null;
}

/** A key file that holds a key (kvstore/envelope.ts, loaded lazily: the CLI need not load it). Throws BAD_STORE_KEY. */
export async function checkKeyFile(file: string): Promise<void> {
  const { loadKeyFile } = await import('../../kvstore/envelope.ts');
  loadKeyFile(file);
}

/** A PEM file of CA certificates, readable and holding at least one certificate. Throws BAD_TLS_CA. */
export function checkCaFile(file: string, flag = '--tls-ca'): void {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ElasticmemError(`${flag} ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); give the PEM file of the CA that signed the store's certificate`, 'BAD_TLS_CA');
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----')) {
    throw new ElasticmemError(`${flag} ${file}: holds no PEM certificate (no -----BEGIN CERTIFICATE----- line); give the CA certificate, not its key`, 'BAD_TLS_CA');
  }
}

/**
 * The store a VM attaches with: each option from the request, else the config's entry
 * for the VM, else the config's default; checked (files readable, options that fit the
 * store) before anything is opened. `name`: the VM, for messages.
 */
export async function resolveStoreSetup(args: StoreArgs, override: VmOverride | undefined, config: Config, name: string): Promise<StoreSetup> {
  const uri = args.uri ?? override?.store ?? config.store;
  const misfit = optionMisfit(uri, args, args.uri !== undefined ? undefined : `the config's store for VM '${name}', ${shownUri(uri)}`);
  if (misfit) throw new ElasticmemError(misfit, 'BAD_REQUEST');
  // The config's settings apply where they can: its key not to memory:, its CA only over TLS.
  const fits = optionsFor(uri);
  const keyFile = !fits.keyFile || args.keyFile === null ? undefined : args.keyFile ?? override?.storeKeyFile ?? config.storeKeyFile;
  const tlsCaFile = !fits.tlsCaFile || args.tlsCaFile === null ? undefined : args.tlsCaFile ?? override?.tlsCaFile ?? config.tlsCaFile;
  const compress = args.compress ?? override?.compress ?? config.compress ?? false;
  if (keyFile) await checkKeyFile(keyFile);
  // (the CLI checked a --tls-ca it was given; here a file is the config's or the previous daemon's)
  if (tlsCaFile) checkCaFile(tlsCaFile, args.tlsCaFile === tlsCaFile ? 'the TLS CA file' : 'tlsCaFile');
  return { uri, ...(keyFile ? { keyFile } : {}), ...(compress ? { compress } : {}), ...(tlsCaFile ? { tlsCaFile } : {}) };
}

/**
 * Taking over a VM the previous daemon left: what the operator does not say is what
 * that daemon used (`was`), where it still applies to the store chosen now (its CA only
 * over TLS, its key not to memory:), and nothing else from the config (null).
 */
export function takeOverArgs(was: StoreSetup, given: StoreArgs): StoreArgs {
  const uri = given.uri ?? was.uri;
  const fits = optionsFor(uri);
  return {
    uri,
    keyFile: given.keyFile !== undefined ? given.keyFile : fits.keyFile ? was.keyFile ?? null : null,
    compress: given.compress ?? !!was.compress,
    tlsCaFile: given.tlsCaFile !== undefined ? given.tlsCaFile : fits.tlsCaFile ? was.tlsCaFile ?? null : null,
  };
}

/** Two VMs share an open store only when they open it the same way (another key, another envelope). */
export function setupKey(s: StoreSetup): string {
  return JSON.stringify([s.uri, s.keyFile ?? '', !!s.compress, s.tlsCaFile ?? '']);
}

/** For the log line of an attach: what the options do. */
export function describeOptions(s: StoreSetup): string {
  const parts = [
    s.keyFile && s.uri !== 'memory:' ? `pages encrypted, key ${s.keyFile}` : '',
    s.compress ? 'pages compressed' : '',
    s.tlsCaFile ? `TLS CA ${s.tlsCaFile}` : '',
  ].filter(Boolean);
  return parts.length ? ` (${parts.join('; ')})` : '';
}
