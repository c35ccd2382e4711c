/**
 * The test guest for tests: everything about the guest image, its kernel command line
 * and its console lives in backend/vm/guest.ts (shared with `elasticmem demo` and
 * `bench vm`) and is re-exported here; what only tests need (the workload's page
 * content, reproduced on the host) stays here.
 */
export {
  REPO_ROOT, GUEST_DIR, DEFAULT_WORKLOAD, guestImage, checkWorkload, guestCmdline, parseWorkloadLine, ConsoleReader,
  type AccessPattern, type WorkloadParams, type GuestImage, type WorkloadPass,
} from '../../backend/vm/guest.ts';

/*
 * The workload's page content, reproduced on the host (same splitmix64 as workload.c)
 * so a test can find a given guest page inside QEMU's RAM and check or damage it.
 */
const M64 = (1n << 64n) - 1n;
function mix(x: bigint): bigint {
  x = (x + 0x9e3779b97f4a7c15n) & M64;
  x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & M64;
  return x ^ (x >> 31n);
}

/** Word `i` (0..511) of workload page `page` at generation `gen`, as 8 little-endian bytes. */
export function workloadWord(seed: number, page: number, gen: number, i: number): Buffer {
  const base = mix(BigInt(seed) ^ mix(BigInt(page) ^ (BigInt(gen) << 40n)));
  const w = base ^ ((BigInt(i + 1) * 0xd6e8feb86659fd93n) & M64);
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(w);
  return b;
}

/** The full 4 KiB content of a workload page. */
export function workloadPage(seed: number, page: number, gen: number): Buffer {
  return Buffer.concat(Array.from({ length: 512 }, (_, i) => workloadWord(seed, page, gen, i)));
}
