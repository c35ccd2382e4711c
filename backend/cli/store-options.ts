/**
 * The store options of a command line (--store, --store-key, --tls-ca), checked before
 * anything is contacted: the same refusals for attach and bench store. A key or CA the
 * store cannot use is a UsageError; an unreadable key or CA file is BAD_STORE_KEY /
 * BAD_TLS_CA (exit 2 as well).
 */
import { parseStoreUri } from '../../kvstore/uri.ts';
import { checkCaFile, checkKeyFile, optionMisfit } from '../daemon/store-setup.ts';
import { UsageError } from './command.ts';

export async function checkStoreOptions(o: { store?: string; keyFile?: string; tlsCaFile?: string }, prefix = ''): Promise<void> {
  if (o.store !== undefined) {
    parseStoreUri(o.store);  // BAD_STORE_URI first
    const misfit = optionMisfit(o.store, { keyFile: o.keyFile, tlsCaFile: o.tlsCaFile });
    if (misfit) throw new UsageError(prefix + misfit);
  }
  if (o.keyFile !== undefined) await checkKeyFile(o.keyFile);
  if (o.tlsCaFile !== undefined) checkCaFile(o.tlsCaFile);
}
