import type net from 'node:net';

/**
 * Where a client's socket reads go (net `onread`), shared by the RESP and memcached
 * clients: consecutive regions of one arena, so a reply lands in memory as one
 * contiguous run and the parser hands out views of it. Nothing is ever read twice into
 * the same bytes (a used region is never handed out again; a new arena is allocated when
 * fewer than MIN_READ bytes are left), so every view stays valid for as long as a caller
 * keeps it. Compared with the stream's 'data' chunks: no 64 KiB allocation and shrink
 * per read, no stream machinery, and a value split between two reads is not copied.
 */

/** Replies are read into arenas of this size, each read at least MIN_READ bytes of room. */
export const ARENA = 256 * 1024;
export const MIN_READ = 64 * 1024;

export class ReadArena {
  private buf = Buffer.allocUnsafe(ARENA);
  private off = 0;

  /** The region the next read goes to. */
  next(): Buffer {
    if (this.buf.length - this.off < MIN_READ) {
      this.buf = Buffer.allocUnsafe(ARENA);
      this.off = 0;
    }
    return this.buf.subarray(this.off);
  }

  /** The first n bytes of `region` (from next()) were filled: they are the chunk. */
  take(region: Buffer, n: number): Buffer {
    this.off += n;
    return region.subarray(0, n);
  }
}

/** net `onread` options that read into a fresh ReadArena and hand each chunk to `deliver`. */
export function arenaOnRead(deliver: (chunk: Buffer) => void): net.OnReadOpts {
  const arena = new ReadArena();
  return {
    buffer: () => arena.next(),
    callback: (n: number, region: Uint8Array) => {
      deliver(arena.take(region as Buffer, n));
      return true;
    },
  };
}
