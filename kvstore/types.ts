/**
 * The page-store plugin interface. Binary (Buffer-native) and batched: every verb
 * takes many pages at once. Keys are (vm, page number); one VM's pages are invisible
 * to another VM. Policy (what to evict, when to fetch) lives in the pager, never here.
 */
export const PAGE_SIZE = 4096;

export interface StoreCapabilities {
  /** Pages survive a restart of the monitor (and of the server, where configured). */
  persistent: boolean;
  /** Largest batch one call accepts; callers split bigger batches. */
  maxBatch: number;
  /** The store lives inside the native data plane (`memory:`): the pager reaches it without JavaScript. */
  native: boolean;
}

export interface StoreUsage {
  pages: number;
  bytes: number;
}

export interface PageStore {
  /** The URI this store was opened from, with any password removed. */
  readonly uri: string;
  readonly capabilities: StoreCapabilities;
  /**
   * Fetch pages. Result has one entry per requested page: the 4 KiB page, or null when
   * the store has no such page. `versions`, when given, are the versions the caller
   * expects (0 = any); a stored page with another version is an integrity error.
   */
  get(vm: string, pages: readonly number[], versions?: readonly number[]): Promise<(Buffer | null)[]>;
  /** Store pages (each exactly PAGE_SIZE bytes). Resolves only once the store acknowledged all of them. */
  put(vm: string, pages: readonly number[], data: readonly Buffer[], versions?: readonly number[]): Promise<void>;
  /** Delete pages; deleting a missing page is not an error. */
  delete(vm: string, pages: readonly number[]): Promise<void>;
  /** Delete every page of one VM. */
  dropVm(vm: string): Promise<void>;
  /** Page numbers stored for one VM (used to rebuild state after a monitor restart). */
  list(vm: string): Promise<number[]>;
  /** Usage of one VM, or of the whole store. */
  usage(vm?: string): Promise<StoreUsage>;
  close(): Promise<void>;
}
