/**
 * The layer below the page envelope: an adapter stores opaque values (an envelope,
 * a little larger than a page) under (vm, page). Adapters know nothing of integrity,
 * compression or encryption; kvstore/envelope.ts adds those to every adapter alike.
 */
import type { StoreCapabilities, StoreUsage } from './types.ts';
import { badArg } from './errors.ts';

export interface RawStore {
  /** The URI with any password removed. */
  readonly uri: string;
  readonly capabilities: Omit<StoreCapabilities, 'native'>;
  getRaw(vm: string, pages: readonly number[]): Promise<(Buffer | null)[]>;
  /** Resolves once the server acknowledged every value. */
  putRaw(vm: string, pages: readonly number[], values: readonly Buffer[]): Promise<void>;
  /**
   * Optional: putRaw of values that are written in place, each `size` bytes, straight into
   * the adapter's outgoing buffer (no value buffer of the caller's, no second copy).
   * `fill(i, dst)` writes value i into dst (dst.length === size); every fill runs before
   * putRawInto returns, so dst never outlives the call. A throwing fill fails the call
   * before anything is sent.
   */
  putRawInto?(vm: string, pages: readonly number[], size: number, fill: (i: number, dst: Buffer) => void): Promise<void>;
  delete(vm: string, pages: readonly number[]): Promise<void>;
  dropVm(vm: string): Promise<void>;
  list(vm: string): Promise<number[]>;
  /** bytes = stored value bytes (envelopes included). */
  usage(vm?: string): Promise<StoreUsage>;
  close(): Promise<void>;
}

/** Connection timeouts shared by the network adapters: fail fast, never hang. */
export interface NetTimeouts {
  connectTimeoutMs: number;
  opTimeoutMs: number;
}
export const DEFAULT_TIMEOUTS: NetTimeouts = { connectTimeoutMs: 2000, opTimeoutMs: 5000 };

export const MAX_PAGE_KEY = 2 ** 53;

export function checkVm(vm: unknown): asserts vm is string {
  if (typeof vm !== 'string' || vm === '') throw badArg('vm id must be a non-empty string');
  if (Buffer.byteLength(vm) > 128) throw badArg(`vm id '${vm.slice(0, 40)}...' is longer than 128 bytes`);
}

export function checkPages(pages: readonly number[]): void {
  if (!Array.isArray(pages)) throw badArg('pages must be an array of page numbers');
  for (let i = 0; i < pages.length; i++) {
    const p = pages[i]!;
    if (!Number.isInteger(p) || p < 0 || p > MAX_PAGE_KEY)
      throw badArg(`page #${i} (${String(p)}) is not an integer in [0, 2^53]`);
  }
}

/**
 * The VM id as a key component: letters, digits, '_', '.', '-' stay, every other byte
 * becomes %XX. Injective, and free of ':', '{', '}' and glob characters, so
 * "em:<tag>:" prefixes never overlap between VMs and SCAN/MATCH patterns are exact.
 */
export function vmTag(vm: string): string {
  return /^[A-Za-z0-9_.-]+$/.test(vm)
    ? vm
    : Array.from(Buffer.from(vm, 'utf8'), (b) => {
        const c = String.fromCharCode(b);
        return /[A-Za-z0-9_.-]/.test(c) ? c : '%' + b.toString(16).toUpperCase().padStart(2, '0');
      }).join('');
}

/** Run `fn` over consecutive slices of at most `max` items, sequentially. */
export async function inChunks<T>(n: number, max: number, fn: (from: number, to: number) => Promise<T[] | void>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < n; i += max) {
    const r = await fn(i, Math.min(n, i + max));
    if (r) for (const x of r) out.push(x);
  }
  return out;
}
