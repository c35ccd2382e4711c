/**
 * Who is on the other end of a Unix socket connection: SO_PEERCRED, through the native
 * addon's peerCred(fd) (native/peercred.cc). The kernel records the peer's pid, uid and
 * gid when it connects (for the client end of a connection: when the listener called
 * listen()), so the answer cannot race with the client.
 *
 * This replaced a lookup through `ss -xpn` (sock_diag) and /proc: it had to find the
 * process holding the peer socket after the fact, and under load about 2 calls in 10
 * failed with PEERCRED_FAILED. With SO_PEERCRED the daemon no longer needs `ss`.
 *
 * What it does not see: a root client that hands its connected socket to an
 * unprivileged process (SCM_RIGHTS) after connecting. That is a deliberate act of root;
 * the file modes of the socket (0600 in a 0700 directory) still keep everyone else out.
 */
import net from 'node:net';
import { ElasticmemError } from '../../native/errors.ts';
import { loadNative, type NativeAddon } from '../../native/index.ts';

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
  /** The same as [pid] and [uid]: the shape callers of the former lookup use. */
  pids: number[];
  uids: number[];
}

/** The addon's peerCred; an addon built from older sources lacks it. */
function nativePeerCred(): NativeAddon['peerCred'] {
  const fn = (loadNative() as Partial<NativeAddon>).peerCred;
  if (typeof fn !== 'function') {
    throw new ElasticmemError('the native addon has no peerCred (built from older sources); rebuild it: npm run setup', 'PEERCRED_UNAVAILABLE');
  }
  return fn;
}

function socketFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new ElasticmemError('cannot read the file descriptor of a control connection (closed already?)', 'PEERCRED_FAILED');
  return fd;
}

/** Credentials of the peer of a connected Unix socket. Throws PEERCRED_FAILED (with errno) when the kernel cannot tell. */
export async function peerCred(sock: net.Socket): Promise<PeerCred> {
  const fd = socketFd(sock);
  let c: { pid: number; uid: number; gid: number };
  try {
    c = nativePeerCred()(fd);
  } catch (e) {
    const err = e as ElasticmemError;
    if (err.code === 'PEERCRED_UNAVAILABLE' || err.code === 'EM_NATIVE_MISSING') throw err;
    throw new ElasticmemError(`the peer credentials of a control connection could not be read: ${err.message}`, 'PEERCRED_FAILED', err.errno ?? 0, 'getsockopt');
  }
  // pid 0: the peer is not a process of this pid namespace (or not connected).
  if (!(c.pid > 0)) throw new ElasticmemError(`the kernel reports no peer process for control connection fd ${fd} (pid ${c.pid})`, 'PEERCRED_FAILED');
  return { ...c, pids: [c.pid], uids: [c.uid] };
}

/** The daemon refuses to start when it could not tell who connects (an addon built without peerCred). */
export function checkPeerCred(): void {
  nativePeerCred();
}
