/**
 * The one error class of elasticmem. The native addon receives this class at load
 * (see native/index.ts) and throws instances of it, so errors from C++ arrive with
 * a machine-readable `code` and the `errno` of the failing syscall, never as bare strings.
 */
import os from 'node:os';

export class ElasticmemError extends Error {
  /** Stable machine-readable code, e.g. EM_ATTACH_NO_REGION, EM_SYSCALL, STORE_UNAVAILABLE, BAD_SIZE. */
  code: string;
  /** errno of the failing syscall, 0 when not a syscall failure. */
  errno: number;
  /** Name of the failing syscall or operation, when there is one. */
  syscall?: string;
  constructor(message: string, code = 'EM_ERROR', errno = 0, syscall?: string) {
    super(message);
    this.name = 'ElasticmemError';
    this.code = code;
    this.errno = errno;
    if (syscall) this.syscall = syscall;
  }
}

export function isElasticmemError(e: unknown, code?: string): e is ElasticmemError {
  return e instanceof ElasticmemError && (code === undefined || e.code === code);
}

/** ` (ENOSPC from fallocate)` for an error or event that carries an errno, else `` (for log lines). */
export function syscallNote(e: { errno?: number; syscall?: string }): string {
  if (!e.errno) return e.syscall ? ` (${e.syscall})` : '';
  const name = Object.entries(os.constants.errno).find(([, v]) => v === e.errno)?.[0] ?? `errno ${e.errno}`;
  return ` (${name}${e.syscall ? ` from ${e.syscall}` : ''})`;
}
