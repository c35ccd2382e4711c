// The pager of one attached target: a fault thread serving userfaultfd events in
// batches, an eviction thread driven by watermarks around the resident cap, and
// the page-state table they share. See docs/architecture.md for the state machine
// and where each invariant of DESIGN.md is enforced. Implemented in pager.cc (set-up,
// store calls, control), pager_fault.cc (the fault thread), pager_evict.cc (the
// evictor) and replacement.h (which pages leave first).
#pragma once
#include "attach.h"
#include <sched.h>
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "adaptive_mutex.h"
#include "latency.h"
#include "page_table.h"
#include "replacement.h"
#include "store_backend.h"
#include "uffd.h"

namespace em {

struct RegionConfig {
  uint64_t start = 0;
  uint64_t length = 0;
  bool memfd = false;          // shared memfd (punch holes) vs private anonymous (injected DONTNEED)
  std::string file_path;       // memfd only: /proc/PID/map_files/LO-HI
  uint64_t file_offset = 0;    // memfd only: offset of start in the file
  std::string name;
  // The region's part of its pages' store keys (key_id << 32 | page): stable across
  // monitor restarts whatever order the regions are listed in. -1: its position in
  // the attach request.
  int64_t key_id = -1;
};

struct PagerConfig {
  pid_t pid = 0;
  int uffd = -1;               // the monitor's copy; the pager owns it from start()
  int target_uffd = -1;        // the same uffd's number inside the target (closed there on detach)
  std::vector<RegionConfig> regions;
  uint32_t cap_pages = 0;
  bool reattach = false;
  std::vector<std::vector<uint32_t>> remote_pages;  // reattach: per region, pages the store holds
  uint32_t prefetch_max = 64;
  uint32_t evict_batch = 256;
  // CPUs for the fault and eviction threads (empty: any). On a machine where waking an
  // idle CPU is slow (a VM), the fault thread on the faulting vCPU's CPU turns each fault
  // into two local context switches instead of two cross-CPU wake-ups (docs/bench-pager.md).
  std::vector<uint32_t> fault_cpus, evict_cpus;
  // No fault_cpus: move the fault thread to the CPU of the thread that faults (checked
  // every kFollowEvery faults), and the evictor (unless evict_cpus) off that CPU. The
  // pinned placement's latency without naming CPUs; a VM whose vCPUs move is followed.
  bool follow_faults = true;
  bool fifo = false;           // FIFO replacement (FluidMem/umap) instead of refault rate: for benchmarks
  bool test_skip_wp = false;   // TEST ONLY: skip write-protect before copy-out, to prove the race test catches lost writes
  bool test_fail_drops = false; // TEST ONLY: every drop removes half its runs, then fails (partial-failure handling)
  bool test_nonblocking_reads = false; // TEST ONLY: the fallback when no wake signal is free (non-blocking reads, ppoll)
  bool test_no_splice = false;  // TEST ONLY: evict by write-protect and copy-out even where splice applies
  bool test_skip_cow_wp = false;  // TEST ONLY: evict_by_splice skips step 0 (write-protecting private pages a write would copy)
  uint32_t test_race_window_ms = 0;  // TEST ONLY: evict_by_splice waits this long before the punch
  bool test_defer_faults = false;  // TEST ONLY: every fault goes through the retry path (as after EAGAIN) before it is served
  uint8_t test_fail_puts = 0;   // TEST ONLY: evict_by_splice's store fails for every other batch (1) or every batch (2)
  uint8_t test_stale_pipe = 0;  // TEST ONLY: every 16th splice batch finds a stray page in its pipe (1); one, kept (2: unsafe)
};

struct PagerEvent {
  std::string type;  // store-down, store-up, page-lost, progress, error, target-exited
  std::string message;
  std::vector<uint64_t> pages;
  uint64_t done = 0, total = 0;
  int err = 0;          // error: errno of the failing system call, when one failed
  std::string syscall;  // error: which one
};

// An "error" event, "what: why": `what` went wrong because of `e` (an em::Error's errno
// and system call go with it to TypeScript), or because system call `syscall` failed
// with `err`.
PagerEvent error_event(const std::string& what, const std::exception& e);
PagerEvent error_event(const std::string& what, int err, const char* syscall);

struct PagerStats {
  uint64_t faults, zero_fills, fetches, evictions, clean_drops, store_writes, prefetched, wp_faults, discards,
      evict_aborts, store_retries, lost_pages;
  uint64_t cap_waits, cap_wait_us;  // fault batches that waited at the cap for the evictor, and for how long
  uint64_t evict_batches;           // eviction batches that took pages out (evictions / evict_batches: pages a batch)
  int fault_cpu;                    // the one CPU the fault thread is pinned to, -1 when none
  std::string evict_mode;           // "splice" (evict_by_splice) or "write-protect"
  uint64_t resident, cap, remote, total_pages, metadata_bytes;
  std::string store_state, store_error;
  bool draining;
  LatencyHistogram::Summary latency;
};

class Pager {
 public:
  using EventSink = std::function<void(PagerEvent)>;
  Pager(PagerConfig cfg, std::unique_ptr<StoreBackend> store, EventSink sink);
  ~Pager();

  void start();                           // UFFDIO_API/REGISTER (or take over), build state, start threads
  PagerStats stats();
  void set_cap(uint32_t pages);
  void detach();                          // blocking: drain every page back, unregister, close (throws on failure; may be run again)
  void abandon();                         // stop serving; the target keeps its uffd and waits
  // Put more guest RAM under the pager while it runs (hot-added memory). Checked first:
  // on bad input nothing changes.
  void add_regions(const std::vector<RegionConfig>& more);

 private:
  struct Region : RegionConfig {
    int fd = -1;
    uint32_t first = 0, npages = 0;
    uint32_t config_index = 0;  // position in the attach request (PagerConfig::remote_pages)
    uint32_t key_id = 0;        // the store key's region part (RegionConfig::key_id)
  };
  struct Run { uint32_t first, count; };
  // Why a page is in a fetch: faulted (read or write) or prefetched behind one.
  enum : uint8_t { kMarkFault = 0, kMarkWrite = 1, kMarkPrefetch = 2, kMarkPrefetchWrite = 3 };
  struct FetchPlan {
    std::vector<uint32_t> want;  // page indexes, ascending
    std::vector<uint8_t> mark;   // kMark* per page
    std::vector<uint64_t> keys;
    std::vector<uint32_t> vers;
    std::vector<uint8_t> data;   // want.size() pages, filled by the store
    std::unique_ptr<bool[]> found;
    size_t found_cap = 0;
    bool wp = true;              // map read faults write-protected (dirty tracking)
  };

  // --- set-up ---
  void open_regions();
  Region make_region(const RegionConfig& rc, uint32_t config_index, uint64_t first) const;
  void check_new_region(const std::vector<RegionConfig>& batch, size_t at, size_t base) const;
  void scan_resident(Region& r, std::vector<uint8_t>& present);
  int open_pagemap() const;
  // A pagemap entry's page holds data: present (bit 63) or swapped out (bit 62).
  static bool in_memory(uint64_t pagemap_entry) { return (pagemap_entry >> 62) & 3; }
  void build_state();
  void start_unguarded(size_t& registered);
  void register_region(const Region& r);
  bool all_regions_memfd() const;
  // A region's store key part: its key_id, or its position in the attach request.
  static int64_t key_id_of(const RegionConfig& rc, size_t config_index) { return rc.key_id >= 0 ? rc.key_id : (int64_t)config_index; }
  void undo_fresh_start(size_t registered);
  // --- fault thread ---
  void fault_loop();
  bool fault_loop_error(const char* what, int err, const char* syscall);
  void report_throttled(const std::string& message);
  void report_throttled(PagerEvent ev);  // an "error" event (error_event)
  struct Retry;
  void requeue_round(const struct uffd_msg* msgs, size_t n, size_t first_unapplied, const std::vector<Retry>& retrying,
                     const std::vector<std::pair<uint64_t, uint64_t>>& removed);
  void handle_wp(uint32_t idx);
  void handle_missing(uint32_t idx, std::vector<uint32_t>& fetch, std::vector<uint32_t>& dels, bool write);
  void handle_remove(uint64_t start, uint64_t end, std::vector<uint32_t>& dels, std::vector<std::pair<uint64_t, uint64_t>>& removed);
  void queue_discard(uint32_t idx, std::vector<uint32_t>& dels);  // mu_ held
  void discard_stored(std::vector<uint32_t>& dels);                 // delete their stored copies, then let them be evicted
  void fetch_pages(std::vector<uint32_t>& faulted, bool wp, bool prefetch, const std::vector<uint32_t>* writes = nullptr);
  void plan_fetch(std::vector<uint32_t>& faulted, bool prefetch, const std::vector<uint32_t>* writes, FetchPlan& plan);
  void fetch_planned(FetchPlan& plan);
  bool map_in_place(FetchPlan& plan);
  void unmark_lost(PageMeta& m);  // mu_ held: a page held as lost was mapped after all
  void drain_all();               // detach's first part: evictor stopped, every remote page back
  void retire_gone_regions();     // RAM blocks QEMU unmapped count as discarded (evictor thread, or detach after it)
  void retry_lost();              // ask the store again for pages held as lost (evictor thread)
  void drain_chunk(std::vector<uint32_t> chunk);  // detach: bring these remote pages in
  // --- evictor ---
  void evict_loop();
  void start_evictor();
  size_t evict_batch(size_t want);
  // in_runs: the dirty victims came in long runs; private_pages: some are private memory.
  size_t evict_by_splice(const std::vector<uint32_t>& dirty, const std::vector<uint32_t>& clean, bool in_runs,
                         bool private_pages);
  void discard_stale_pipe(int fd, const char* what);
  void open_splice_pipe();
  void pick_victims(size_t n, std::vector<uint32_t>& out, std::vector<uint32_t>& arm);
  void read_pages(const std::vector<uint32_t>& idx, uint8_t* out);
  void drop_pages(const std::vector<uint32_t>& idx, RemoteTask* stopped = nullptr);
  std::vector<uint8_t> probe_gone(const std::vector<uint32_t>& idx);
  std::vector<uint8_t> drop_or_probe(const std::vector<uint32_t>& sorted, RemoteTask* stopped = nullptr);
  void mark_left(uint32_t idx, bool zero);
  // --- store with retry (invariant 5) ---
  bool store_get(std::vector<uint64_t>& keys, std::vector<uint32_t>& vers, uint8_t* out, bool* found);
  bool store_put(std::vector<uint64_t>& keys, std::vector<uint32_t>& vers, const uint8_t* data);
  bool put_or_report(std::vector<uint64_t>& keys, std::vector<uint32_t>& vers, const uint8_t* data);
  bool store_del(std::vector<uint64_t>& keys);
  bool del_or_report(std::vector<uint64_t>& keys);  // the evictor's: reports instead of throwing
  template <class F> bool with_retry(const char* what, F&& op);
  // --- helpers ---
  int region_of(uint64_t addr) const;
  uint64_t addr_of(uint32_t idx) const;
  uint64_t key_of(uint32_t idx) const;
  // Page index of an address inside r, and the store key of a page of r (index of the
  // region in the attach request, stable across restarts, << 32 | page in the region).
  static uint32_t index_in(const Region& r, uint64_t addr) { return r.first + (uint32_t)((addr - r.start) / kPageSize); }
  static uint64_t key_in(const Region& r, uint32_t idx) { return ((uint64_t)r.key_id << 32) | (idx - r.first); }
  const Region& region_at(uint32_t idx) const;
  void list_insert(uint32_t idx, bool hot);
  void list_remove(uint32_t idx) { policy_.remove(idx); }
  void wake_deferred();
  void for_runs(const std::vector<uint32_t>& sorted, const std::function<void(const Run&)>& fn);
  void emit(PagerEvent ev);
  void pin_thread(const std::vector<uint32_t>& cpus, const char* which);
  void follow_faulter(uint32_t tid);
  void place_evictor();
  void settle_events_then(const std::string& what, const std::function<bool()>& op);
  bool can_block_in_read();
  void watch_exit();
  void report_target_exit();
  void wake_fault_thread();
  void stop_threads();
  static uint64_t now_us();
  size_t batch_pages() const;
  uint64_t slack() const;
  uint64_t high_watermark() const;
  uint64_t low_watermark() const;

  PagerConfig cfg_;
  std::unique_ptr<StoreBackend> store_;
  EventSink sink_;
  // Guest-RAM regions: a fixed array that add_regions appends to while the fault and
  // eviction threads read it; the count is published after the entry (release).
  static constexpr size_t kMaxRegions = 64;
  std::unique_ptr<Region[]> regions_{new Region[kMaxRegions]};
  std::atomic<size_t> nregions_{0};
  struct RegionSpan {
    Region* b;
    Region* e;
    Region* begin() const { return b; }
    Region* end() const { return e; }
    size_t size() const { return (size_t)(e - b); }
    Region& operator[](size_t i) const { return b[i]; }
  };
  RegionSpan regions() const { return {regions_.get(), regions_.get() + nregions_.load(std::memory_order_acquire)}; }
  int pidfd_ = -1;
  int stop_efd_ = -1;

  AdaptiveMutex mu_;              // guards table_, lists, deferred_, resident_ (spins briefly: see adaptive_mutex.h)
  PageTable table_;
  ReplacementPolicy<PageTable> policy_{table_, cfg_.fifo};  // (replacement.h) guarded by mu_
  std::vector<uint32_t> deferred_;   // faults on pages being dropped: woken after the drop
  uint32_t evict_clock_ = 0;
  std::atomic<uint64_t> resident_{0};
  std::atomic<uint64_t> remote_{0};
  std::atomic<uint32_t> cap_{0};

  std::mutex add_mu_;             // one add_regions at a time
  std::mutex fetch_mu_;           // serialises fetch_pages between the fault thread and the drain
  std::mutex evict_mu_;
  std::condition_variable evict_cv_;
  std::condition_variable evicted_cv_;  // the evictor made progress (fault-path back-pressure)
  std::atomic<bool> stop_{false};
  std::atomic<bool> evict_stop_{false};  // stop_threads: the evictor stops before the fault thread
  std::atomic<bool> draining_{false};
  std::thread fault_thread_, evict_thread_;
  // The fault thread sleeps in a blocking read() of the uffd (wake_signal.h); it then
  // cannot watch the target's pidfd, so a watcher thread does and interrupts it when the
  // target exits. false: non-blocking reads and ppoll, as before (no free signal).
  std::atomic<bool> blocking_reads_{false};
  std::thread exit_watch_thread_;
  // Joins of the threads above: a detach (its own thread) and an abandon (the JS thread,
  // e.g. QEMU died mid-drain) may both join them; std::thread::join from two threads at
  // once is undefined (glibc: EINVAL thrown in one of them, which left the fault thread running).
  std::mutex join_mu_;
  std::atomic<bool> fault_done_{false};      // the fault thread left its loop: stop interrupting it
  std::atomic<bool> exit_reported_{false};   // "target-exited" is emitted once
  // Eviction by splice (evict_by_splice): the store in this process. The pipes hold one
  // batch of dirty pages by reference; evictor only. Memfd pages go through pipe_r_/
  // pipe_w_ (spliced from the memfd here), private pages through tpipe_, whose write
  // end is in the target (vmspliced from inside it), opened at the first private batch.
  bool splice_evictions_ = false;
  int pipe_r_ = -1, pipe_w_ = -1;
  TargetPipe tpipe_;
  void open_pipe_in_target();
  // Private pages a guest write would not land in in place (evict_by_splice step 0).
  int evict_pagemap_fd_ = -1;
  std::vector<uint32_t> copied_on_write(const std::vector<uint32_t>& sorted_private);
  static bool ksm_quiet();
  size_t pipe_pages_ = 0;
  size_t splice_batch_ = 0;  // pages in the next splice batch (kSpliceBatch, or pipe_pages_ for runs)
  // The last batch's dirty victims were private pages in long runs: the next batches
  // take kRunBatch pages, and the watermarks (slack) widen to match. Written by the
  // evictor, read by the fault thread's watermark checks.
  std::atomic<bool> run_batches_{false};
  uint64_t test_puts_ = 0;   // test_fail_puts: batches stored so far
  uint64_t test_splice_batches_ = 0;  // test_stale_pipe: splice batches so far
  FetchPlan fault_plan_;          // the fault thread's reusable fetch buffers
  // Faults whose ioctl met EAGAIN (the mm was changing: an event waits in the uffd, which
  // only the fault thread reads). Handled again on the fault thread's next round, at
  // most 200 µs later. Fault thread only.
  struct Retry {
    enum Kind : uint8_t { kRead, kWrite, kWp };
    uint32_t idx;
    Kind kind;
    // The kind of a fault message's flags.
    static Kind of(uint64_t flags) {
      return (flags & UFFD_PAGEFAULT_FLAG_WP) ? kWp : (flags & UFFD_PAGEFAULT_FLAG_WRITE) ? kWrite : kRead;
    }
  };
  std::vector<Retry> retry_;
  std::vector<std::pair<uint64_t, uint64_t>> pending_removes_;  // REMOVE events a failed round left unapplied (fault thread)
  std::atomic<uint64_t> last_error_us_{0};  // report_throttled (fault thread and evictor)
  std::atomic<uint64_t> held_errors_{0};

  // follow_faults placement: the CPUs this process may use (at start), the fault
  // thread's CPU (-1: not placed), faults until the next check, and the CPU the evictor
  // should avoid (it applies that itself: place_evictor).
  cpu_set_t allowed_cpus_{};
  std::atomic<int> fault_cpu_{-1};
  uint32_t follow_countdown_ = 0;
  int evictor_avoids_ = -1;  // evictor thread only: the CPU it last moved off

  // sequential-fault detection for prefetch
  uint64_t last_lost_retry_us_ = 0;  // evictor thread only
  size_t unregistered_upto_ = 0;     // detach: regions [0, this) are unregistered (a retry goes on from here)
  std::vector<bool> gone_;           // regions QEMU unmapped (retire_gone_regions): evictor thread, then detach
  bool any_unregistered_ = false;    // detach: some region is unregistered (the evictor must not run again)
  bool look_for_gone_ = false;       // evictor: a batch failed as on an unmapped block (ENOENT, EFAULT)
  // Pages whose stored copy the fault thread is deleting (discarded by QEMU, then maybe
  // written again): the evictor leaves them alone until the delete is done, so a late
  // delete can never remove a newer copy it stored meanwhile. mu_.
  std::unordered_multiset<uint32_t> deleting_;
  // Pages lost for good (their content could be neither stored nor put back; whatever
  // the store holds for them is older): never fetched, not even by retry_lost or a drain. mu_.
  std::unordered_set<uint32_t> unrecoverable_;
  std::atomic<pid_t> evict_tid_{0};  // the evictor's thread id (back-pressure asks whether it runs)
  bool evictor_runnable() const;
  std::atomic<uint64_t> fetch_cost_us_{0};  // running average µs per page fetched (written by the fetching thread)
  uint32_t last_fault_ = kNil;
  uint32_t seq_streak_ = 0;

  std::mutex store_state_mu_;
  std::string store_state_ = "ok", store_error_;

  std::atomic<uint64_t> faults_{0}, zero_fills_{0}, fetches_{0}, evictions_{0}, clean_drops_{0}, store_writes_{0},
      prefetched_{0}, wp_faults_{0}, discards_{0}, evict_aborts_{0}, store_retries_{0}, lost_pages_{0},
      cap_waits_{0}, cap_wait_us_{0}, evict_batches_{0};
  LatencyHistogram latency_;
};

}  // namespace em
