/**
 * Who is on the other end of a Unix socket connection (the SO_PEERCRED question).
 *
 * Node exposes neither SO_PEERCRED nor SCM_CREDENTIALS, so we ask the kernel's socket
 * diagnostics through `ss -xpn` (iproute2, netlink sock_diag): it reports, for every
 * Unix socket, its inode, its peer's inode and the processes holding it. Our accepted
 * socket's inode comes from /proc/self/fd/<fd>; its peer inode leads to the client's
 * socket and so to the client processes, whose effective uid is read from
 * /proc/<pid>/status. Every process holding the client end must be root: a socket
 * passed around to an unprivileged process is refused too.
 */
import fs from 'node:fs';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ElasticmemError } from '../../native/errors.ts';

const run = promisify(execFile);

export interface PeerCred {
  pids: number[];
  uids: number[];
}

interface SsEntry { inode: number; peer: number; pids: number[] }

/** Parse `ss -xpnH` lines. Exported for tests. */
export function parseSs(text: string): Map<number, SsEntry> {
  const out = new Map<number, SsEntry>();
  const re = /^\S+\s+\S+\s+\d+\s+\d+\s+(?:.*?\s+)?(\d+)\s+\S+\s+(\d+)(?:\s+users:\((.*)\))?\s*$/;
  for (const line of text.split('\n')) {
    const m = re.exec(line);
    if (!m) continue;
    const pids = [...(m[3] ?? '').matchAll(/pid=(\d+)/g)].map((x) => Number(x[1]));
    out.set(Number(m[1]), { inode: Number(m[1]), peer: Number(m[2]), pids });
  }
  return out;
}

function socketFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new ElasticmemError('cannot read the file descriptor of a control connection', 'PEERCRED_FAILED');
  return fd;
}

function euidOf(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^Uid:\s+(\d+)\s+(\d+)/m.exec(status);
  if (!m) throw new Error(`no Uid line for pid ${pid}`);
  return Number(m[2]);
}

/** Credentials of the peer of an accepted connection. Throws PEERCRED_FAILED when they cannot be established. */
export async function peerCred(sock: net.Socket): Promise<PeerCred> {
  const fd = socketFd(sock);
  const link = fs.readlinkSync(`/proc/self/fd/${fd}`);
  const m = /^socket:\[(\d+)\]$/.exec(link);
  if (!m) throw new ElasticmemError(`control connection fd ${fd} is not a socket (${link})`, 'PEERCRED_FAILED');
  const inode = Number(m[1]);
  const { stdout } = await run('ss', ['-xpnH'], { maxBuffer: 64 * 1024 * 1024 });
  const table = parseSs(stdout);
  const mine = table.get(inode);
  if (!mine) throw new ElasticmemError(`socket inode ${inode} not found by ss`, 'PEERCRED_FAILED');
  const peer = table.get(mine.peer);
  if (!peer || peer.pids.length === 0) throw new ElasticmemError('the client process of a control connection could not be identified', 'PEERCRED_FAILED');
  const uids: number[] = [];
  for (const pid of peer.pids) {
    try { uids.push(euidOf(pid)); } catch { /* exited meanwhile: ignore */ }
  }
  if (uids.length === 0) throw new ElasticmemError('the client of a control connection exited before it was checked', 'PEERCRED_FAILED');
  return { pids: peer.pids, uids };
}

/** The daemon refuses to start without `ss`: it could not tell who connects. */
export async function checkPeerCredTool(): Promise<void> {
  try {
    await run('ss', ['-V']);
  } catch {
    throw new ElasticmemError("the daemon needs 'ss' (Debian package iproute2) to check the credentials of every client; install it: apt-get install iproute2", 'PEERCRED_UNAVAILABLE');
  }
}
