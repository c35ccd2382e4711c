import { parse, SOCKET_OPT, type Command } from '../command.ts';
import { loadConfig, stateFileFor } from '../../daemon/config.ts';
import { Daemon } from '../../daemon/daemon.ts';
import { DEFAULT_SOCKET } from '../../daemon/server.ts';
import { ElasticmemError } from '../../../native/errors.ts';

const usage = `usage: elasticmem daemon [--config FILE] [--socket PATH] [--state FILE]

Run the elasticmem monitor: one process for every VM on this host. Listens on a
root-only control socket (directory 0700, socket 0600, peer credentials checked on
every connection); logs one line per event on stderr.

  --config FILE  YAML config (default: none). Keys:
                   store: "memory:"            default store for attach (quote it)
                   storeKeyFile: /etc/elasticmem/store.key   AES-256-GCM key for pages at rest
                   compress: true              compress pages (attach --compress)
                   tlsCaFile: /etc/elasticmem/ca.pem   CA for rediss:// stores (attach --tls-ca)
                   socket: /path.sock          control socket
                   state: /path/state.json     state file for restarts
                   pager: { faultCpus: [1], evictCpus: [0] }   thread placement (default: the
                                               fault thread follows the faulting vCPU)
                   limits: { maxVms: 16, minLocal: 16M }
                   vms: { web1: { store: redis://10.0.0.5:6379, local: 512M, storeKeyFile: /etc/k, compress: false } }
                 A commented example: vm-configs/elasticmem.example.yaml
  --socket PATH  control socket (default ${DEFAULT_SOCKET})
  --state FILE   state file (default: the config's state:, else /run/elasticmem/state.json,
                 or state.json beside a socket other than the default one)

After a crash or kill -9, start the daemon again: it reads the state file and takes
over every VM whose QEMU still runs (the QEMU kept its userfaultfd and waited).
VMs whose pages were in memory: cannot be taken over; use a persistent store.
SIGTERM/SIGINT: VMs on memory: are drained back first; the others are left for the
next daemon.

examples:
  elasticmem daemon
  elasticmem daemon --config /etc/elasticmem.yaml
  elasticmem daemon --socket /tmp/em.sock --state /tmp/em-state.json
`;

const cmd: Command = {
  name: 'daemon',
  summary: 'run the monitor that manages every attached VM',
  usage,
  async run(args) {
    const { values, help } = parse('daemon', args, { ...SOCKET_OPT, config: { type: 'string' }, state: { type: 'string' } }, { min: 0, max: 0, names: '' });
    if (help) { process.stdout.write(usage); return 0; }
    if (process.getuid?.() !== 0) throw new ElasticmemError('the daemon must run as root (it attaches to QEMU processes with ptrace and userfaultfd)', 'NOT_ROOT');
    const config = loadConfig(values.config);
    const socket = values.socket ?? config.socket ?? DEFAULT_SOCKET;
    config.state = stateFileFor(config, values.state, socket, DEFAULT_SOCKET);
    const daemon = new Daemon(config, socket);
    await daemon.start();
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        process.stderr.write(`elasticmem daemon: ${sig}, stopping\n`);
        void daemon.stop().then(resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    return 0;
  },
};
export default cmd;
