/**
 * Parsing of store URIs (DESIGN.md, "Store URIs"). Pure: no connection is made here,
 * so a bad URI is reported before anything is touched.
 *
 *   memory:                                   embedded, in the monitor
 *   file:///path                              embedded, persistent (LMDB)
 *   redis://[user:pass@]host:port[/db]        rediss:// for TLS
 *   redis+cluster://[user:pass@]h1:p1,h2:p2   rediss+cluster:// for TLS
 *   memcached://h1:p1[,h2:p2]
 *   aerospike://[user:pass@]h1:p1[,h2:p2]/namespace[/set]
 */
import { badUri } from './errors.ts';

export interface HostPort { host: string; port: number }

export type StoreSpec =
  | { kind: 'memory' }
  | { kind: 'file'; path: string }
  | { kind: 'redis'; tls: boolean; host: string; port: number; db: number; username?: string; password?: string }
  | { kind: 'redis-cluster'; tls: boolean; nodes: HostPort[]; username?: string; password?: string }
  | { kind: 'memcached'; servers: HostPort[] }
  | { kind: 'aerospike'; hosts: HostPort[]; namespace: string; set: string; username?: string; password?: string };

export const EXAMPLES = {
  memory: 'memory:',
  file: 'file:///var/lib/elasticmem/pages',
  redis: 'redis://127.0.0.1:6379/0',
  'redis+cluster': 'redis+cluster://10.0.0.1:7000,10.0.0.2:7000,10.0.0.3:7000',
  memcached: 'memcached://10.0.0.1:11211,10.0.0.2:11211',
  aerospike: 'aerospike://10.0.0.1:3000/elasticmem/pages',
} as const;

const SUPPORTED = Object.values(EXAMPLES).join(', ');

const DEFAULT_PORTS: Record<string, number> = { redis: 6379, 'redis+cluster': 6379, memcached: 11211, aerospike: 3000 };

export function parseStoreUri(uri: string): StoreSpec {
  try {
    return parse(uri);
  } catch (e) {
    // A URI that does not parse cannot be redacted by its parts: the message may quote
    // credentials, so mask anything shaped like them.
    if (e instanceof Error) e.message = hideCredentials(e.message);
    throw e;
  }
}

function parse(uri: string): StoreSpec {
  if (typeof uri !== 'string' || uri.trim() === '') throw badUri('the store URI is empty', SUPPORTED);
  const m = /^([a-z][a-z0-9+.-]*):(.*)$/i.exec(uri.trim());
  if (!m) throw badUri(`'${uri}' has no scheme (expected one of memory:, file:, redis:, rediss:, redis+cluster:, rediss+cluster:, memcached:, aerospike:)`, SUPPORTED);
  const scheme = m[1]!.toLowerCase();
  const rest = m[2]!;
  switch (scheme) {
    case 'memory':
      if (rest !== '') throw badUri(`'memory:' takes nothing after the colon, got '${rest}'`, EXAMPLES.memory);
      return { kind: 'memory' };
    case 'file':
      return parseFile(rest);
    case 'redis':
    case 'rediss':
      return parseRedis(rest, scheme === 'rediss');
    case 'redis+cluster':
    case 'rediss+cluster':
      return parseRedisCluster(rest, scheme === 'rediss+cluster');
    case 'memcached':
      return parseMemcached(rest);
    case 'aerospike':
      return parseAerospike(rest);
    default:
      throw badUri(`unknown scheme '${scheme}:' (supported: memory, file, redis, rediss, redis+cluster, rediss+cluster, memcached, aerospike)`, SUPPORTED);
  }
}

/** The URI with any password replaced by '***' (for display and PageStore.uri). */
export function redactUri(uri: string): string {
  // The credentials end at the last '@' (as splitAuth reads them: a password may hold '@').
  const m = /^([a-z][a-z0-9+.-]*:\/\/)(.*)$/is.exec(uri);
  if (!m) return hideCredentials(uri);
  const [, scheme, rest] = m as unknown as [string, string, string];
  const at = rest.lastIndexOf('@');
  if (at < 0) return uri;
  const cred = rest.slice(0, at);
  const colon = cred.indexOf(':');
  if (colon < 0 || cred.startsWith('/')) return uri;  // a user without password, or a file path
  return `${scheme}${cred.slice(0, colon)}:***@${rest.slice(at + 1)}`;
}

/** Masks anything shaped like credentials ("user:secret@") in a text quoting a URI that did not parse. */
export function hideCredentials(text: string): string {
  return text.replace(/(\/\/|[a-z+]:)([^\s'"/:@]*):[^\s'"]*@/gi, (_, pre, user) => `${pre}${user}:***@`);
}

function parseFile(rest: string) {
  if (!rest.startsWith('//')) throw badUri(`a file store needs an absolute path after 'file://', got 'file:${rest}'`, EXAMPLES.file);
  const after = rest.slice(2);
  if (!after.startsWith('/')) {
    const host = after.split('/')[0];
    throw badUri(`'file://${after}' names a host ('${host}'); use three slashes and an absolute path`, EXAMPLES.file);
  }
  if (/[?#]/.test(after)) throw badUri(`a file store URI takes no query or fragment ('${after}')`, EXAMPLES.file);
  let path: string;
  try { path = decodeURIComponent(after); } catch { throw badUri(`'${after}' has a malformed %-escape`, EXAMPLES.file); }
  if (path === '/' ) throw badUri(`the file store cannot live at '/'; name a directory`, EXAMPLES.file);
  if (path.includes('\0')) throw badUri('the path contains a NUL byte', EXAMPLES.file);
  return { kind: 'file' as const, path: path.length > 1 ? path.replace(/\/+$/, '') : path };
}

/**
 * Where the path starts after "[user:pass@]hosts": the first '/' after the credentials,
 * which end at the last '@' (a password may hold '/' and '@', as splitAuth and
 * redactUri read it); -1 when there is none.
 */
function pathStart(body: string): number {
  return body.indexOf('/', body.lastIndexOf('@') + 1);
}

/** Split "user:pass@rest" (credentials are %-decoded). */
function splitAuth(authority: string, example: string): { username?: string; password?: string; hosts: string } {
  const at = authority.lastIndexOf('@');
  if (at < 0) return { hosts: authority };
  const cred = authority.slice(0, at);
  const colon = cred.indexOf(':');
  const dec = (s: string) => { try { return decodeURIComponent(s); } catch { throw badUri('the credentials contain a malformed %-escape', example); } };
  const username = colon < 0 ? dec(cred) : dec(cred.slice(0, colon));
  const password = colon < 0 ? undefined : dec(cred.slice(colon + 1));
  return { username: username === '' ? undefined : username, password, hosts: authority.slice(at + 1) };
}

export function parseHostList(list: string, defaultPort: number, example: string): HostPort[] {
  if (list === '') throw badUri('no host given', example);
  return list.split(',').map((item) => parseHostPort(item.trim(), defaultPort, example));
}

function parseHostPort(item: string, defaultPort: number, example: string): HostPort {
  if (item === '') throw badUri('an empty host in the host list (stray comma?)', example);
  let host: string;
  let portStr: string | undefined;
  if (item.startsWith('[')) {
    const end = item.indexOf(']');
    if (end < 0) throw badUri(`unterminated IPv6 address '${item}'`, example);
    host = item.slice(1, end);
    const tail = item.slice(end + 1);
    if (tail !== '' && !tail.startsWith(':')) throw badUri(`unexpected '${tail}' after '[${host}]'`, example);
    portStr = tail === '' ? undefined : tail.slice(1);
  } else {
    const parts = item.split(':');
    if (parts.length > 2) throw badUri(`'${item}' has more than one ':' (write IPv6 addresses as [::1]:port)`, example);
    host = parts[0]!;
    portStr = parts[1];
  }
  if (host === '') throw badUri(`'${item}' has no host name`, example);
  if (!/^[A-Za-z0-9._:-]+$/.test(host)) throw badUri(`'${host}' is not a valid host name or address`, example);
  let port = defaultPort;
  if (portStr !== undefined) {
    if (!/^\d{1,5}$/.test(portStr) || Number(portStr) < 1 || Number(portStr) > 65535)
      throw badUri(`port '${portStr}' of '${item}' is not a number between 1 and 65535`, example);
    port = Number(portStr);
  }
  return { host, port };
}

function noQuery(s: string, example: string) {
  if (/[?#]/.test(s)) throw badUri(`query strings and fragments are not supported ('${s}')`, example);
}

function parseRedis(rest: string, tls: boolean) {
  const ex = tls ? 'rediss://user:secret@redis.example:6380/0' : EXAMPLES.redis;
  if (!rest.startsWith('//')) throw badUri(`expected '//' after 'redis:', got 'redis:${rest}'`, ex);
  noQuery(rest, ex);
  const body = rest.slice(2);
  const slash = pathStart(body);
  const authority = slash < 0 ? body : body.slice(0, slash);
  const path = slash < 0 ? '' : body.slice(slash + 1);
  const { username, password, hosts } = splitAuth(authority, ex);
  const list = parseHostList(hosts, DEFAULT_PORTS.redis!, ex);
  if (list.length !== 1) throw badUri(`redis:// takes one server, got ${list.length} (for a cluster use redis+cluster://)`, EXAMPLES['redis+cluster']);
  let db = 0;
  if (path !== '') {
    if (!/^\d{1,5}$/.test(path)) throw badUri(`database '${path}' is not a non-negative integer`, ex);
    db = Number(path);
  }
  return { kind: 'redis' as const, tls, host: list[0]!.host, port: list[0]!.port, db, username, password };
}

function parseRedisCluster(rest: string, tls: boolean) {
  const ex = EXAMPLES['redis+cluster'];
  if (!rest.startsWith('//')) throw badUri(`expected '//' after 'redis+cluster:'`, ex);
  noQuery(rest, ex);
  let body = rest.slice(2);
  if (body.endsWith('/')) body = body.slice(0, -1);
  if (pathStart(body) >= 0) throw badUri('a Redis Cluster has no database number (only db 0 exists in cluster mode)', ex);
  const { username, password, hosts } = splitAuth(body, ex);
  return { kind: 'redis-cluster' as const, tls, nodes: parseHostList(hosts, DEFAULT_PORTS['redis+cluster']!, ex), username, password };
}

function parseMemcached(rest: string) {
  const ex = EXAMPLES.memcached;
  if (!rest.startsWith('//')) throw badUri(`expected '//' after 'memcached:'`, ex);
  noQuery(rest, ex);
  let body = rest.slice(2);
  if (body.endsWith('/')) body = body.slice(0, -1);
  if (body.includes('/')) throw badUri(`memcached takes no path ('${body}')`, ex);
  if (body.includes('@')) throw badUri('memcached authentication is not supported by this adapter; run memcached on a private network', ex);
  return { kind: 'memcached' as const, servers: parseHostList(body, DEFAULT_PORTS.memcached!, ex) };
}

function parseAerospike(rest: string) {
  const ex = EXAMPLES.aerospike;
  if (!rest.startsWith('//')) throw badUri(`expected '//' after 'aerospike:'`, ex);
  noQuery(rest, ex);
  const body = rest.slice(2);
  const slash = pathStart(body);
  if (slash < 0) throw badUri('an Aerospike store needs a namespace after the hosts', ex);
  const { username, password, hosts } = splitAuth(body.slice(0, slash), ex);
  const parts = body.slice(slash + 1).split('/').filter((p, i, a) => !(p === '' && i === a.length - 1));
  if (parts.length < 1 || parts[0] === '') throw badUri('an Aerospike store needs a namespace after the hosts', ex);
  if (parts.length > 2) throw badUri(`too many path parts '${parts.join('/')}' (expected namespace[/set])`, ex);
  const [namespace, set = 'elasticmem'] = parts as [string, string?];
  if (!/^[^\0:;]{1,31}$/.test(namespace)) throw badUri(`'${namespace}' is not a valid Aerospike namespace (1-31 characters)`, ex);
  if (!/^[^\0:;]{1,63}$/.test(set)) throw badUri(`'${set}' is not a valid Aerospike set name (1-63 characters)`, ex);
  return { kind: 'aerospike' as const, hosts: parseHostList(hosts, DEFAULT_PORTS.aerospike!, ex), namespace, set, username, password };
}
