/**
 * Finding guest-RAM regions of an arbitrary process from /proc/PID/maps: a memfd
 * mapping by name, or an address range. (QEMU RAM blocks are matched to these
 * mappings by the backend's QEMU target code.)
 */
import fs from 'node:fs';
import { ElasticmemError } from './errors.ts';
import type { RegionSpec } from './index.ts';

/** One line of /proc/PID/maps. */
export interface Mapping {
  lo: bigint;
  hi: bigint;
  /** lo-hi exactly as the kernel prints it: also the name of the /proc/PID/map_files entry. */
  range: string;
  perms: string;
  offset: bigint;
  dev: string;
  inode: number;
  path: string;
}

/** /proc/PID/maps text, parsed (the one parser: the backend's QEMU target code uses it too). */
export function parseMaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({
      lo: BigInt('0x' + m[1]), hi: BigInt('0x' + m[2]), range: `${m[1]}-${m[2]}`, perms: m[3]!,
      offset: BigInt('0x' + m[4]), dev: m[5]!, inode: Number(m[6]), path: m[7]!.trim(),
    });
  }
  return out;
}

/** /proc/PID/maps of a live process; EM_NO_PROCESS (naming the pid) when it is gone. */
export function readMaps(pid: number): Mapping[] {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH')
      throw new ElasticmemError(`no process with pid ${pid}: check the pid (it may have exited)`, 'EM_NO_PROCESS', 3, 'open');
    throw new ElasticmemError(`cannot read /proc/${pid}/maps: ${(e as Error).message}`, 'EM_NO_PROCESS');
  }
  return parseMaps(text);
}

/** One mapping of /proc/PID/smaps: its range, its `Key: value` lines and its VmFlags. */
export interface SmapsEntry {
  lo: bigint;
  hi: bigint;
  fields: Map<string, string>;
  vmFlags: string[];
}

/** /proc/PID/smaps, parsed (throws when it cannot be read). */
export function readSmaps(pid: number): SmapsEntry[] {
  const out: SmapsEntry[] = [];
  let cur: SmapsEntry | undefined;
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+)\s/.exec(line);
    if (head) {
      cur = { lo: BigInt('0x' + head[1]), hi: BigInt('0x' + head[2]), fields: new Map(), vmFlags: [] };
      out.push(cur);
      continue;
    }
    const kv = cur && /^(\w+):\s+(.*)$/.exec(line);
    if (!kv) continue;
    if (kv[1] === 'VmFlags') cur!.vmFlags = kv[2]!.trim().split(/\s+/);
    else cur!.fields.set(kv[1]!, kv[2]!.trim());
  }
  return out;
}

/** RegionSpec of a mapping: memfd (shared) or private anonymous. Anything else is refused with a reason. */
export function regionOfMapping(pid: number, m: Mapping, name: string): RegionSpec {
  const start = '0x' + m.lo.toString(16);
  const length = Number(m.hi - m.lo);
  if (m.path.startsWith('/memfd:')) {
    if (m.perms[3] !== 's')
      throw new ElasticmemError(`mapping ${name} of ${m.path} is private (copy-on-write): guest RAM on a memfd must be mapped shared (share=on / <access mode='shared'/>)`, 'EM_UNSUPPORTED_BACKING');
    return { start, length, kind: 'memfd', name, filePath: `/proc/${pid}/map_files/${m.lo.toString(16)}-${m.hi.toString(16)}`, fileOffset: Number(m.offset) };
  }
  if (m.path === '' && m.perms[3] === 'p') return { start, length, kind: 'anon', name };
  throw new ElasticmemError(
    `guest RAM '${name}' is backed by '${m.path || 'shared anonymous memory'}', which elasticmem cannot page: use a shared memfd (memory-backend-memfd,share=on) or private anonymous memory (libvirt's default)`,
    'EM_UNSUPPORTED_BACKING',
  );
}

/** Every mapping of a memfd with this name (as memfd_create named it). */
export function findMemfdRegions(pid: number, memfdName: string): RegionSpec[] {
  const maps = readMaps(pid).filter((m) => m.path === `/memfd:${memfdName} (deleted)` || m.path === `/memfd:${memfdName}`);
  if (!maps.length) throw new ElasticmemError(`process ${pid} has no memfd mapping named '${memfdName}': check the name in /proc/${pid}/maps`, 'EM_ATTACH_NO_REGION');
  return maps.map((m, i) => regionOfMapping(pid, m, maps.length > 1 ? `${memfdName}#${i}` : memfdName));
}

/** The region [start, start+length) of a process, which must be exactly one whole mapping or lie within one. */
export function findRange(pid: number, start: bigint, length: number, name = 'range'): RegionSpec {
  const end = start + BigInt(length);
  const m = readMaps(pid).find((x) => x.lo <= start && end <= x.hi);
  if (!m) throw new ElasticmemError(`process ${pid} has no single mapping covering 0x${start.toString(16)}+${length}: check /proc/${pid}/maps`, 'EM_ATTACH_NO_REGION');
  const whole = regionOfMapping(pid, m, name);
  const delta = Number(start - m.lo);
  return { ...whole, start: '0x' + start.toString(16), length, fileOffset: whole.kind === 'memfd' ? (whole.fileOffset ?? 0) + delta : undefined };
}
