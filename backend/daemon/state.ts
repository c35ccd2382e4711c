/**
 * The daemon's state file (default /run/elasticmem/state.json): which VMs are attached,
 * to which QEMU process, store and cap. After the daemon dies (kill -9, crash) the next
 * daemon reads it at start and takes over every VM whose QEMU still runs and still holds
 * the userfaultfd, without an operator re-typing attach. Written atomically (rename).
 *
 * It holds each store URI as given, password included: a restarted daemon must be able
 * to open the store again. So the file is created mode 0600 whatever the umask, and a
 * folder the daemon creates for it (or its own default folder) is 0700.
 */
import fs from 'node:fs';
import path from 'node:path';

export interface StateEntry {
  spec: string;
  name: string;
  kind: string;
  vmId: string;
  pid: number;
  startTime: number;
  /** The store URI as given (password included): needed to re-open the store. */
  store: string;
  /** AES-256-GCM key file of the store, when the VM's pages are encrypted at rest. */
  storeKeyFile?: string;
  /** Pages compressed (a restarted daemon goes on compressing; reading needs no option). */
  compress?: boolean;
  /** CA file the store's TLS certificate is checked against (rediss://). */
  tlsCaFile?: string;
  capBytes: number;
  /** 'attached', or 'crashed' (QEMU died; stored pages kept until `detach`). */
  status: 'attached' | 'crashed';
}

/** The daemon's own folder: made private even when it exists already. */
export const DEFAULT_STATE_DIR = '/run/elasticmem';

/**
 * The VMs the previous daemon served. A missing file is an empty list; a file that
 * cannot be read or parsed is moved aside (FILE.bad-TIME) with a warning rather than
 * overwritten by the next save: it names the stores the waiting VMs' pages are in.
 */
export function readState(file: string, warn: (msg: string) => void = () => {}): StateEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') warn(`cannot read state file ${file}: ${(e as Error).message}; VMs it lists are not taken over`);
    return [];
  }
  try {
    const doc = JSON.parse(text) as { v?: number; vms?: StateEntry[] };
    if (!Array.isArray(doc.vms)) throw new Error('no "vms" list');
    return doc.vms.filter((e) => typeof e?.vmId === 'string' && typeof e.pid === 'number');
  } catch (e) {
    const aside = `${file}.bad-${Date.now()}`;
    try { fs.renameSync(file, aside); } catch { /* left in place */ }
    warn(`state file ${file} does not parse (${(e as Error).message}); kept as ${aside}; VMs it lists are not taken over`);
    return [];
  }
}

export function writeState(file: string, entries: StateEntry[]): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  // A folder the operator chose (it may be shared, like /tmp) is left alone: the file's
  // own mode protects it. Ours is always private.
  if (path.resolve(dir) === DEFAULT_STATE_DIR) fs.chmodSync(dir, 0o700);
  writePrivateFile(file, JSON.stringify({ v: 1, vms: entries }, null, 1) + '\n');
}

/** Replace `file` atomically (rename) with `text`, mode 0600 whatever the umask. */
export function writePrivateFile(file: string, text: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  // 'w' on a leftover tmp file would keep its mode: remove it, create it 0600, and
  // fchmod in case the umask took bits away from 0600 (it cannot add any).
  fs.rmSync(tmp, { force: true });
  const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.fchmodSync(fd, 0o600);
    fs.writeFileSync(fd, text);  // (all of it: a single write may be short on a nearly full /run)
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}
