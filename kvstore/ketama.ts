/**
 * A ketama-style consistent-hash ring: each server owns 160 points on a 32-bit circle
 * (40 MD5 digests of "host:port-i", 4 points each, as libketama does); a key belongs
 * to the first point at or after MD5(key). Adding or removing a server moves only
 * about 1/N of the keys. The ring never skips a dead server: for a page store,
 * re-routing a page to a server that does not hold it would read "missing" for a page
 * that exists — the caller gets STORE_UNAVAILABLE instead and retries.
 */
import crypto from 'node:crypto';

const POINTS_PER_HASH = 4;
const HASHES_PER_SERVER = 40;

export class HashRing<S> {
  private readonly points: Uint32Array;
  private readonly owners: S[];

  constructor(servers: readonly { id: string; server: S }[]) {
    if (servers.length === 0) throw new Error('a hash ring needs at least one server');
    const pts: { p: number; s: S }[] = [];
    for (const { id, server } of servers) {
      for (let i = 0; i < HASHES_PER_SERVER; i++) {
        const d = crypto.createHash('md5').update(`${id}-${i}`).digest();
        for (let j = 0; j < POINTS_PER_HASH; j++) pts.push({ p: d.readUInt32LE(j * 4), s: server });
      }
    }
    pts.sort((a, b) => a.p - b.p);
    this.points = Uint32Array.from(pts, (x) => x.p);
    this.owners = pts.map((x) => x.s);
  }

  static hash(key: string | Buffer): number {
    return crypto.createHash('md5').update(key).digest().readUInt32LE(0);
  }

  /** The server owning `key`. */
  get(key: string | Buffer): S {
    return this.owners[this.indexOf(HashRing.hash(key))]!;
  }

  private indexOf(h: number): number {
    const pts = this.points;
    let lo = 0;
    let hi = pts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pts[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return lo === pts.length ? 0 : lo;
  }
}
