import path from 'node:path';
import { call } from '../client.ts';
import { parse, printJson, UsageError, SOCKET_OPT, type Command, JSON_HELP, SOCKET_HELP } from '../command.ts';
import { vmArg } from '../vm-arg.ts';
import { formatSize, parseSize } from '../../size.ts';
import { checkStoreOptions } from '../store-options.ts';

/** " (pages encrypted at rest; compressed)" or nothing. */
function storeNotes(r: Record<string, unknown>): string {
  const notes = [r.encrypted ? 'pages encrypted at rest' : '', r.compressed ? 'compressed' : ''].filter(Boolean);
  return notes.length ? ` (${notes.join('; ')})` : '';
}

const usage = `usage: elasticmem attach <vm> --local SIZE [--store URI] [--store-key FILE] [--compress | --no-compress]
                       [--tls-ca FILE] [--json] [--socket PATH]

Put a running VM's RAM under elasticmem: at most SIZE of it stays resident on this
host, the rest goes to the store and comes back on demand. The VM keeps running.

  <vm>             libvirt domain name or UUID, pid:<PID>, or qmp:<QMP socket path>
  --local SIZE     resident cap (K/M/G suffixes); at most the guest's RAM. Without
                   it: the config's vms.<vm>.local, or, for a VM whose previous
                   daemon died, the cap it had (a take-over)
  --store URI      where evicted pages go (default: the daemon's config, else memory:)
                     memory:  file:///path  redis://host:port[/db] (rediss:// TLS)
                     redis+cluster://h1:p1,h2:p2  memcached://h1:p1[,h2:p2]
                     aerospike://h1:p1[,h2:p2]/namespace[/set]
                   a password in the URI (redis://:PASS@host:port) is shown as ***
  --store-key FILE encrypt pages at rest with AES-256-GCM under this key (32 bytes:
                   raw, 64 hex digits or base64; create one with
                   head -c 32 /dev/urandom > FILE; chmod 600 FILE). Default: the
                   daemon's config (storeKeyFile). Not for memory: (nothing leaves)
  --compress       compress pages in the store: LZ4 in memory:, deflate elsewhere
                   (a page is kept raw when that does not shrink it). Default: the
                   config's compress (vms.<vm>.compress, else compress), else off
  --no-compress    store pages raw whatever the config says
  --tls-ca FILE    rediss:// stores: trust the CA certificate(s) in this PEM file
                   besides the system's (a private CA). Default: the config's
                   (vms.<vm>.tlsCaFile, else tlsCaFile)
                   Taking over a VM a previous daemon left: what is not given is
                   what that daemon used (store, key, compression, CA)
${JSON_HELP}
${SOCKET_HELP}

Checks before anything is touched: the VM exists and runs, its memory backing is
supported (shared memfd or private anonymous), the cap fits, the key file holds a
key, the CA file holds a certificate, the store answers, and the VM is not attached
already.

examples:
  elasticmem attach web1 --local 512M
  elasticmem attach 3f9a1c2e-0b7d-4d3c-9a55-2f0e6b1c9d11 --local 1G --store redis://10.0.0.5:6379
  elasticmem attach qmp:/run/vm7/qmp.sock --local 256M --store file:///var/lib/elasticmem
  elasticmem attach web2 --local 256M --store redis://10.0.0.5:6379 --store-key /etc/elasticmem/store.key
  elasticmem attach web3 --local 256M --store rediss://10.0.0.5:6380 --tls-ca /etc/elasticmem/ca.pem --compress
`;

const cmd: Command = {
  name: 'attach',
  summary: 'put a running VM under elasticmem with a resident-memory cap',
  usage,
  async run(args) {
    const { values, positionals, help } = parse('attach', args, { ...SOCKET_OPT, local: { type: 'string' }, store: { type: 'string' }, 'store-key': { type: 'string' }, compress: { type: 'boolean' }, 'no-compress': { type: 'boolean' }, 'tls-ca': { type: 'string' }, json: { type: 'boolean' } }, { min: 1, max: 1, names: 'the VM to attach (e.g. elasticmem attach web1 --local 512M)' });
    if (help) { process.stdout.write(usage); return 0; }
    // What can be checked here is checked before the daemon is asked (exit 2, and a
    // mistake is not hidden behind "no daemon running"); the daemon checks the rest.
    const req: Record<string, unknown> = { vm: vmArg(positionals[0]!) };
    if (values.local !== undefined) {
      parseSize(values.local, '--local');
      req.local = values.local;
    }
    await checkStoreOptions({ store: values.store, keyFile: values['store-key'], tlsCaFile: values['tls-ca'] });
    if (values.store !== undefined) req.store = values.store;
    // The daemon runs elsewhere: it gets the key and CA files' absolute paths, never the key.
    if (values['store-key'] !== undefined) req.storeKey = path.resolve(values['store-key']);
    if (values.compress && values['no-compress']) throw new UsageError('--compress and --no-compress contradict each other: give one');
    if (values.compress || values['no-compress']) req.compress = !!values.compress;
    if (values['tls-ca'] !== undefined) req.tlsCa = path.resolve(values['tls-ca']);
    const r = (await call('attach', req, { socket: values.socket })) as Record<string, unknown>;
    if (values.json) printJson(r);
    else {
      const regions = (r.regions as { name: string; bytes: number; kind: string }[]) ?? [];
      process.stdout.write(`attached ${r.name}${r.tookOver ? ' (took over from a previous daemon)' : ''}: local ${formatSize(r.localBytes as number)} of ${formatSize(r.guestRamBytes as number)}, store ${r.store}${storeNotes(r)}\n`);
      for (const g of regions) process.stdout.write(`  ${g.name}: ${formatSize(g.bytes)} ${g.kind}\n`);
    }
    return 0;
  },
};
export default cmd;
