/**
 * Sizes on the command line, in config files and in requests: `512M`, `2G`, `64K`
 * (binary units), or a plain byte count that is a whole number of 4 KiB pages.
 */
import { ElasticmemError } from '../native/errors.ts';

export const PAGE = 4096;
const UNITS: Record<string, number> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** Parse a size into bytes. `what` names the value in the error (e.g. "--local"). */
export function parseSize(input: unknown, what = 'size'): number {
  const text = typeof input === 'number' ? String(input) : typeof input === 'string' ? input.trim() : '';
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT])?(?:i?B)?$/i.exec(text);
  if (!m && /^-\s*\d/.test(text)) throw new ElasticmemError(`${what}: '${text}' must be larger than zero; e.g. 512M`, 'BAD_SIZE');
  if (!m) {
    throw new ElasticmemError(
      `${what}: '${String(input)}' is not a size; use a number with a K, M or G suffix, e.g. 512M or 2G`,
      'BAD_SIZE',
    );
  }
  const num = Number(m[1]);
  const unit = m[2] ? UNITS[m[2].toUpperCase()]! : 1;
  const bytes = Math.round(num * unit);
  if (!m[2] && !Number.isInteger(num)) {
    throw new ElasticmemError(`${what}: '${text}' is not a whole number of bytes; e.g. 512M`, 'BAD_SIZE');
  }
  if (bytes <= 0) throw new ElasticmemError(`${what}: '${text}' must be larger than zero; e.g. 512M`, 'BAD_SIZE');
  if (bytes % PAGE !== 0) {
    const near = Math.max(PAGE, Math.round(bytes / PAGE) * PAGE);
    throw new ElasticmemError(
      `${what}: '${text}' (${bytes} bytes) is not a multiple of the 4 KiB page size; the nearest is ${exactSize(near)}`,
      'BAD_SIZE',
    );
  }
  if (!Number.isSafeInteger(bytes)) throw new ElasticmemError(`${what}: '${text}' is too large`, 'BAD_SIZE');
  return bytes;
}

/** Binary size for display, one decimal: 268435456 -> "256M", 1536 MiB -> "1.5G", 1280 MiB -> "1.3G". */
export function formatSize(bytes: number): string {
  const abs = Math.abs(bytes);
  for (const [u, f] of [['T', UNITS.T!], ['G', UNITS.G!], ['M', UNITS.M!], ['K', UNITS.K!]] as const) {
    if (abs >= f) {
      const v = bytes / f;
      return `${Number.isInteger(v) ? v : v.toFixed(1)}${u}`;
    }
  }
  return `${bytes}B`;
}

/**
 * Binary size, exact, in the largest unit that shows it with at most two decimals:
 * 1280 MiB -> "1.25G", 2047 MiB -> "2047M". For a size a message asks the user to type
 * (a rounded "1.3G" would be refused as no whole number of pages).
 */
export function exactSize(bytes: number): string {
  const abs = Math.abs(bytes);
  for (const [u, f] of [['T', UNITS.T!], ['G', UNITS.G!], ['M', UNITS.M!], ['K', UNITS.K!]] as const) {
    if (abs >= f && Number.isInteger((abs * 100) / f)) return `${bytes / f}${u}`;
  }
  return `${bytes}B`;
}

export const pagesOf = (bytes: number): number => Math.floor(bytes / PAGE);
