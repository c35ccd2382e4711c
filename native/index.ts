/**
 * Typed entry to the C++ data plane (build/Release/elasticmem.node). The addon exports
 * a few flat functions; classes with lifetimes and events live above (native/pager.ts,
 * kvstore/memory.ts). The error class is handed to the addon once, at load.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { ElasticmemError } from './errors.ts';

export { ElasticmemError } from './errors.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ADDON_PATH = path.join(here, '..', 'build', 'Release', 'elasticmem.node');

export type { RegionSpec, AcquiredUffd, PagerStatsRaw, BridgeRequest, PagerEvent, PagerStartOptions, PagerTestHooks, NativeAddon } from './native.d.ts';
import type { NativeAddon } from './native.d.ts';


let cached: NativeAddon | undefined;

export function loadNative(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  let addon: NativeAddon;
  try {
    addon = require(ADDON_PATH) as NativeAddon;
  } catch (e) {
    throw new ElasticmemError(
      `the native data plane is not built (${(e as Error).message.split('\n')[0]}); run: npm run setup`,
      'EM_NATIVE_MISSING',
    );
  }
  addon.setErrorClass(ElasticmemError);
  cached = addon;
  return addon;
}
