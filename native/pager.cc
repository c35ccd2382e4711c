#include "pager.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attach.h"
#include "error.h"
#include "inject.h"
#include "uffd.h"
#include "wake_signal.h"

namespace em {

namespace {
constexpr size_t kMaxMsgs = 64;           // uffd messages read per batch
constexpr size_t kDrainBatch = 256;       // pages fetched per drain step
constexpr int kIovMax = 1024;
constexpr uint64_t kRetryMinMs = 50, kRetryMaxMs = 5000;
constexpr int kEvictorNice = 10;
constexpr uint32_t kFollowEvery = 256;  // faults between checks of where the faulting thread runs
constexpr uint64_t kArmFetchCostUs = 30;  // ~4 uffd round trips on this class of machine
// Pages per splice eviction of scattered pages (evict_by_splice): a fault on one of them
// waits from its punch until the batch is stored, so such batches are kept short.
// Measured (pinned zipf, 2 runs each): 64-page batches 1.60-1.66 µs a touch, 256-page
// ones 1.71-1.76; the write-protect path gains nothing from shorter batches (1.79-1.84
// either way). Victims in long runs (a sequential scan) go in full evictBatch batches:
// there the evictor's throughput matters (64-page batches: 4x the cap waits on seq).
constexpr size_t kSpliceBatch = 64;
// Pages per batch while private victims come in long runs (run_batches_): each such
// batch stops a target thread to inject MADV_DONTNEED, a fixed ~0.5 ms here, so a
// 256-page batch spent most of its time on that stop and capped a sequential scan's
// speed (private seq, pinned: 2.1-2.3 µs a touch with 256-page batches, 1.43 with 1024).
constexpr size_t kRunBatch = 1024;
// True on the fault thread, the uffd's only reader: its ioctls must not wait out EAGAIN
// (see OnAgain in uffd.h), everyone else's may.
thread_local bool tl_uffd_reader = false;
OnAgain again_mode() { return tl_uffd_reader ? OnAgain::kReturn : OnAgain::kWait; }
thread_local bool tl_evictor = false;  // stop_threads stops the evictor first (evict_stop_)

bool all_zero(const uint8_t* p) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < kPageSize / 8; i += 4)
    if (w[i] | w[i + 1] | w[i + 2] | w[i + 3]) return false;
  return true;
}
void sleep_ms(uint64_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)((ms % 1000) * 1000000)};
  nanosleep(&ts, nullptr);
}
}  // namespace

uint64_t Pager::now_us() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

Pager::Pager(PagerConfig cfg, std::unique_ptr<StoreBackend> store, EventSink sink)
    : cfg_(std::move(cfg)), store_(std::move(store)), sink_(std::move(sink)) {
  cap_ = cfg_.cap_pages;
  if (cfg_.evict_batch == 0) cfg_.evict_batch = 256;
  if (cfg_.evict_batch > 1024) cfg_.evict_batch = 1024;
  if (cfg_.prefetch_max > 256) cfg_.prefetch_max = 256;
}

Pager::~Pager() {
  stop_threads();
  for (auto& r : regions())
    if (r.fd >= 0) close(r.fd);
  if (pidfd_ >= 0) close(pidfd_);
  if (stop_efd_ >= 0) close(stop_efd_);
  if (pipe_r_ >= 0) close(pipe_r_);
  if (pipe_w_ >= 0) close(pipe_w_);
  if (tpipe_.read_fd >= 0) close(tpipe_.read_fd);
  if (evict_pagemap_fd_ >= 0) close(evict_pagemap_fd_);
  if (cfg_.uffd >= 0) close(cfg_.uffd);
}

void Pager::emit(PagerEvent ev) {
  if (sink_) sink_(std::move(ev));
}

// ---------------------------------------------------------------- set-up

void Pager::open_regions() {
  if (cfg_.regions.size() > kMaxRegions)
    throw Error("EM_BAD_REGION", std::to_string(cfg_.regions.size()) + " RAM regions; the pager takes at most " + std::to_string(kMaxRegions));
  uint64_t total = 0;
  for (size_t ci = 0; ci < cfg_.regions.size(); ci++) {
    check_new_region(cfg_.regions, ci, 0);
    regions_[ci] = make_region(cfg_.regions[ci], (uint32_t)ci, total);
    total += regions_[ci].npages;
  }
  std::sort(regions_.get(), regions_.get() + cfg_.regions.size(), [](const Region& a, const Region& b) { return a.start < b.start; });
  nregions_.store(cfg_.regions.size(), std::memory_order_release);
  if (!table_.grow((uint32_t)total)) throw_sys("mmap", "allocating the page table");
}

// A region as the pager keeps it, its memfd opened (total: pages before it).
Pager::Region Pager::make_region(const RegionConfig& rc, uint32_t config_index, uint64_t first) const {
  Region r;
  static_cast<RegionConfig&>(r) = rc;
  r.config_index = config_index;
  r.key_id = (uint32_t)key_id_of(rc, config_index);
  r.first = (uint32_t)first;
  r.npages = (uint32_t)(rc.length / kPageSize);
  if (r.memfd) {
    r.fd = open(rc.file_path.c_str(), O_RDWR | O_CLOEXEC);
    if (r.fd < 0) throw_sys("open", "opening the memfd of region '" + rc.name + "' at " + rc.file_path);
  }
  return r;
}

// Checks on region batch[at] (config index base + at) before anything is set up:
// aligned, not empty, overlapping neither the regions the pager has nor those before it
// in the batch, and a store key part of its own.
void Pager::check_new_region(const std::vector<RegionConfig>& batch, size_t at, size_t base) const {
  const RegionConfig& rc = batch[at];
  if (rc.start % kPageSize || rc.length % kPageSize || rc.length == 0)
    throw Error("EM_BAD_REGION", "region '" + rc.name + "' is not page aligned or is empty");
  if (rc.key_id > (int64_t)UINT32_MAX) throw Error("EM_BAD_REGION", "region '" + rc.name + "': key id out of range");
  auto key_of_batch = [&](size_t i) { return key_id_of(batch[i], base + i); };
  const int64_t key = key_of_batch(at);
  const uint64_t end = rc.start + rc.length;
  auto clash = [&](uint64_t s, uint64_t l, int64_t other_key, const std::string& other) {
    if (rc.start < s + l && s < end) throw Error("EM_BAD_REGION", "region '" + rc.name + "' overlaps region '" + other + "'");
    if (other_key == key)
      throw Error("EM_BAD_REGION", "regions '" + rc.name + "' and '" + other + "' have the same store key id " + std::to_string(key));
  };
  for (const Region& r : regions()) clash(r.start, r.length, r.key_id, r.name);
  for (size_t i = 0; i < at; i++) clash(batch[i].start, batch[i].length, key_of_batch(i), batch[i].name);
}

// Which pages of a region are resident now: memfd holes (SEEK_DATA/SEEK_HOLE) or
// pagemap present/swapped bits for private memory.
// The target's /proc/PID/pagemap (one 64-bit entry per page of its address space).
int Pager::open_pagemap() const {
  std::string path = "/proc/" + std::to_string(cfg_.pid) + "/pagemap";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_sys("open", "reading " + path);
  return fd;
}

void Pager::scan_resident(Region& r, std::vector<uint8_t>& present) {
  present.assign(r.npages, 0);
  if (r.memfd) {
    off_t end = (off_t)(r.file_offset + r.length);
    off_t pos = (off_t)r.file_offset;
    while (pos < end) {
      off_t data = lseek(r.fd, pos, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;
        throw_sys("lseek(SEEK_DATA)", "scanning resident pages of '" + r.name + "'");
      }
      if (data >= end) break;
      off_t hole = lseek(r.fd, data, SEEK_HOLE);
      if (hole < 0) throw_sys("lseek(SEEK_HOLE)", "scanning resident pages of '" + r.name + "'");
      if (hole > end) hole = end;
      for (off_t o = data; o < hole; o += kPageSize) present[(o - (off_t)r.file_offset) / kPageSize] = 1;
      pos = hole;
    }
    return;
  }
  int fd = open_pagemap();
  std::vector<uint64_t> buf(4096);
  for (uint32_t i = 0; i < r.npages; i += buf.size()) {
    size_t n = std::min<size_t>(buf.size(), r.npages - i);
    off_t off = (off_t)((r.start / kPageSize + i) * 8);
    ssize_t got = pread(fd, buf.data(), n * 8, off);
    if (got != (ssize_t)(n * 8)) {
      int err = got < 0 ? errno : EIO;
      close(fd);
      throw_sys("pread", "reading the target's pagemap", err);
    }
    for (size_t j = 0; j < n; j++) present[i + j] = in_memory(buf[j]);
  }
  close(fd);
}

void Pager::build_state() {
  std::vector<uint8_t> present;
  for (size_t ri = 0; ri < regions().size(); ri++) {
    Region& r = regions_[ri];
    scan_resident(r, present);
    std::vector<uint8_t> remote(r.npages, 0);
    if (cfg_.reattach && r.config_index < cfg_.remote_pages.size())  // indexed like cfg_.regions
      for (uint32_t p : cfg_.remote_pages[r.config_index])
        if (p < r.npages) remote[p] = 1;
    for (uint32_t i = 0; i < r.npages; i++) {
      uint32_t idx = r.first + i;
      PageMeta& m = table_[idx];
      if (present[i]) {
        m.state = kResDirty;
        if (remote[i]) m.flags |= kFlStoreCopy;
        list_insert(idx, false);
        resident_++;
      } else if (remote[i]) {
        m.state = kRemote;
        m.flags |= kFlStoreCopy;
        m.prev = 0;
        remote_++;
      }
    }
  }
}

// Before the fault thread runs (a take-over), repeat `op` until the mm stops changing,
// reading the uffd meanwhile: REMOVE events are applied to the page table (a dead
// monitor's drop, or QEMU's discard); faults are dropped, the caller wakes their threads.
void Pager::settle_events_then(const std::string& what, const std::function<bool()>& op) {
  struct uffd_msg msgs[kMaxMsgs];
  for (int attempt = 0; attempt < 10000; attempt++) {  // ~2 s at most
    if (op()) return;
    ssize_t got = read(cfg_.uffd, msgs, sizeof msgs);
    if (got < 0 && errno != EAGAIN && errno != EINTR) throw_sys("read", "reading the userfaultfd before " + what);
    std::vector<uint64_t> dels;
    std::vector<std::pair<uint64_t, uint64_t>> removed;
    {
      std::lock_guard<AdaptiveMutex> g(mu_);
      for (ssize_t i = 0; got > 0 && i < got / (ssize_t)sizeof(struct uffd_msg); i++)
        if (msgs[i].event == UFFD_EVENT_REMOVE) handle_remove(msgs[i].arg.remove.start, msgs[i].arg.remove.end, dels, removed);
    }
    if (!dels.empty()) store_del(dels);
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, nullptr);
  }
  throw Error("EM_UFFD_BUSY", what + ": the target's memory map kept changing for 2 s (EAGAIN)", EAGAIN, "UFFDIO_WRITEPROTECT");
}

// Follow the faults (cfg_.follow_faults): put the fault thread on the CPU the faulting
// thread last ran on. On a VM, waking an idle vCPU costs ~18 µs (docs/bench-pager.md),
// and a fault is two wake-ups; on the faulter's CPU both are local context switches.
// The faulter waits for this thread meanwhile, so its last CPU is where it will resume.
void Pager::follow_faulter(uint32_t tid) {
  // Field 39 of its stat: the CPU it last ran on. "" when the thread just ended: try
  // again on a later fault. (ptid is the id in the faulter's own pid namespace: for a
  // target in another namespace it names no thread of the target here, and nothing moves.)
  std::string field = stat_field(cfg_.pid, (pid_t)tid, 39);
  if (field.empty()) return;
  int cpu = atoi(field.c_str());
  if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &allowed_cpus_) || cpu == fault_cpu_) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (pthread_setaffinity_np(pthread_self(), sizeof one, &one) != 0) return;  // stays where it is
  fault_cpu_ = cpu;  // the evictor moves off it at its next round (place_evictor)
}

// The evictor, following the fault thread: run anywhere but its CPU (unless evict_cpus
// were given, or there is no other CPU).
void Pager::place_evictor() {
  int avoid = fault_cpu_;
  if (!cfg_.follow_faults || !cfg_.evict_cpus.empty() || avoid < 0 || avoid == evictor_avoids_) return;
  evictor_avoids_ = avoid;
  cpu_set_t rest = allowed_cpus_;
  CPU_CLR(avoid, &rest);
  if (CPU_COUNT(&rest) == 0) return;
  pthread_setaffinity_np(pthread_self(), sizeof rest, &rest);  // best effort, like pin_thread
}

// Pin the calling pager thread to `cpus` (empty: leave it to the scheduler). A failure
// is reported, not fatal: the pager works anywhere, only its latency changes.
void Pager::pin_thread(const std::vector<uint32_t>& cpus, const char* which) {
  if (cpus.empty()) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t c : cpus) CPU_SET(c, &set);
  int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (rc != 0) emit({"error", std::string("could not pin the ") + which + " thread: " + strerror(rc), {}, 0, 0});
}

// Start the pager; on a failure of a fresh attach, leave the target as it was: no
// range registered (a fault there would wait for a reader that never comes), no thread
// left, and the uffd closed inside the target, so a new attach is not taken for a
// take-over. A failed take-over keeps everything: the target waits for a monitor.
void Pager::start() {
  size_t registered = 0;
  try {
    start_unguarded(registered);
  } catch (...) {
    if (!cfg_.reattach) undo_fresh_start(registered);
    throw;
  }
}

void Pager::undo_fresh_start(size_t registered) {
  stop_threads();
  for (size_t i = 0; i < registered && i < regions().size(); i++) {
    try {
      uffd_writeprotect(cfg_.uffd, regions_[i].start, regions_[i].length, false);
      uffd_unregister(cfg_.uffd, regions_[i].start, regions_[i].length);  // wakes any waiter
    } catch (const std::exception&) {  // best effort: the error being thrown says what went wrong
    }
  }
  if (cfg_.target_uffd >= 0) {
    try {
      RemoteTask task(cfg_.pid);
      task.syscall(SYS_close, cfg_.target_uffd);
    } catch (const std::exception&) {
    }
  }
}

// Hot-added guest RAM (a DIMM's memory backend, any new memfd or private range): checked,
// registered and counted while the fault and eviction threads run. The page table grows
// in place and the region array is appended to, so readers never see an entry move; a
// region is published before its range is registered, so its first fault finds it. The
// cap stays what it was: the new memory is paged within it.
void Pager::add_regions(const std::vector<RegionConfig>& more) {
  std::lock_guard<std::mutex> ag(add_mu_);
  if (stop_ || draining_) throw Error("EM_PAGER_STOPPED", "the pager is stopping or detaching; memory cannot be put under it now");
  if (more.empty()) return;
  const size_t n0 = regions().size();
  if (n0 + more.size() > kMaxRegions)
    throw Error("EM_BAD_REGION", "the pager takes at most " + std::to_string(kMaxRegions) + " RAM regions per VM; it has " + std::to_string(n0));
  const bool all_memfd = all_regions_memfd();
  uint64_t added = 0;
  for (size_t i = 0; i < more.size(); i++) {
    check_new_region(more, i, cfg_.regions.size());
    // A VM whose RAM is all memfd is paged with UFFD_EVENT_REMOVE on (start), which
    // private memory cannot use: the evictor's own DONTNEED would raise it for every drop.
    if (all_memfd && !more[i].memfd)
      throw Error("EM_BAD_REGION", "region '" + more[i].name + "' is private memory, but this VM's RAM is shared memfd, paged with discard events that private memory cannot use; back the new memory with a memfd (memory-backend-memfd,share=on; libvirt <source type='memfd'/> with <access mode='shared'/>)");
    added += more[i].length / kPageSize;
  }
  const uint64_t first = table_.size();
  if (first + added >= kNil) throw Error("EM_BAD_REGION", "guest RAM too large for the page table (16 TiB max)");
  std::vector<Region> fresh;
  auto close_fresh = [&](size_t from) {
    for (size_t i = from; i < fresh.size(); i++)
      if (fresh[i].fd >= 0) close(fresh[i].fd);
  };
  try {
    uint64_t at = first;
    for (size_t i = 0; i < more.size(); i++) {
      fresh.push_back(make_region(more[i], (uint32_t)(cfg_.regions.size() + i), at));
      at += fresh.back().npages;
    }
  } catch (...) {
    close_fresh(0);
    throw;
  }
  if (!table_.grow((uint32_t)added)) {
    int e = errno;
    close_fresh(0);
    throw_sys("mprotect", "growing the page table for hot-added memory", e);
  }
  // (The table keeps its new entries if a registration below fails: absent pages nobody
  // can reach, a few bytes each.)
  for (size_t i = 0; i < fresh.size(); i++) {
    const size_t slot = n0 + i;
    regions_[slot] = fresh[i];
    fresh[i].fd = -1;  // the array owns it now
    nregions_.store(slot + 1, std::memory_order_release);
    const Region& r = regions_[slot];
    try {
      register_region(r);
    } catch (...) {
      // Unpublished again; its entry stays in the array, unused, until the next add.
      nregions_.store(slot, std::memory_order_release);
      if (regions_[slot].fd >= 0) close(regions_[slot].fd);
      regions_[slot].fd = -1;
      close_fresh(i + 1);
      throw;
    }
    cfg_.regions.push_back(more[i]);
    // Pages already there (QEMU may have touched the memory before it was registered)
    // are resident; a page faulted in since the registration is the fault thread's.
    std::vector<uint8_t> present;
    try {
      scan_resident(regions_[slot], present);
    } catch (const Error& e) {  // the region is in service; only pages QEMU wrote before it was registered stay untracked
      emit({"error", std::string("hot-added region: ") + e.what(), {}, 0, 0});
      present.assign(r.npages, 0);
    }
    uint64_t adopted = 0;
    {
      std::lock_guard<AdaptiveMutex> g(mu_);
      for (uint32_t p = 0; p < r.npages; p++) {
        uint32_t idx = r.first + p;
        if (!present[p] || table_[idx].state != kAbsent) continue;
        table_[idx].state = kResDirty;
        list_insert(idx, false);
        adopted++;
      }
      resident_ += adopted;
    }
  }
  if (resident_ > high_watermark()) evict_cv_.notify_one();
}

// Register a region with the uffd (missing and write-protect faults); a range that
// cannot be write-protected is unregistered again and refused.
void Pager::register_region(const Region& r) {
  uint64_t ioctls = uffd_register(cfg_.uffd, r.start, r.length, true);
  if (!(ioctls & (1ULL << _UFFDIO_WRITEPROTECT))) {
    uffd_unregister(cfg_.uffd, r.start, r.length);
    throw Error("EM_UFFD_FEATURES", "region '" + r.name + "' does not support userfaultfd write-protect (needed so no write is lost during eviction)");
  }
}

bool Pager::all_regions_memfd() const {
  RegionSpan rs = regions();
  return std::all_of(rs.begin(), rs.end(), [](const Region& r) { return r.memfd; });
}

void Pager::start_unguarded(size_t& registered) {
  // A take-over may find the uffd blocking (a previous monitor's blocking_reads_):
  // everything before the fault thread starts reads it without waiting.
  if (!uffd_set_nonblocking(cfg_.uffd, true)) throw_sys("fcntl", "making the userfaultfd non-blocking");
  open_regions();
  pidfd_ = (int)syscall(SYS_pidfd_open, cfg_.pid, 0);
  if (pidfd_ < 0) throw_sys("pidfd_open", "watching process " + std::to_string(cfg_.pid));
  stop_efd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stop_efd_ < 0) throw_sys("eventfd", "creating the pager's stop signal");
  bool any_memfd = std::any_of(regions().begin(), regions().end(), [](const Region& r) { return r.memfd; });
  if (!cfg_.reattach) {
    // EVENT_REMOVE: QEMU's discards (MADV_DONTNEED / MADV_REMOVE) are announced, so a
    // discarded page that is remote loses its stored copy instead of coming back stale.
    // Only when every region is a shared memfd: for private memory the evictor's own
    // injected MADV_DONTNEED raises the event too, one per range, and the madvise waits
    // for each to be read before it zaps the next range: a drop of 256 scattered pages
    // becomes 256 round trips with the fault thread. Measured (with the fault thread
    // reading events during store waits, and the evictor waiting for its own events to
    // be handled): the anonymous churn test did 5x fewer writes (34.7k vs 174k). So
    // private memory keeps the limit of docs/architecture.md (a discarded remote page
    // keeps its stored copy).
    bool all_memfd = all_regions_memfd();
    // THREAD_ID: the faulting thread's id in each fault message (follow_faulter).
    uint64_t want = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID | (all_memfd ? UFFD_FEATURE_EVENT_REMOVE : 0) |
                    (any_memfd ? UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0);
    uint64_t got = uffd_api(cfg_.uffd, want);
    if ((got & want) != want) throw Error("EM_UFFD_FEATURES", "the kernel lacks userfaultfd features the pager needs (missing/write-protect on shmem)");
  }
  // (Re-)registering with the same uffd is allowed, so a take-over registers too.
  for (auto& r : regions()) {
    register_region(r);
    registered++;
  }
  build_state();
  if (cfg_.reattach) {
    // The dead monitor may have left pages write-protected and faulting threads whose
    // messages it had read: unprotect everything (resident pages are treated as dirty)
    // and wake every waiter so each fault is delivered again to us. A discard by QEMU
    // meanwhile can still hold the mm changing (EAGAIN): its event is applied first.
    for (auto& r : regions()) {
      settle_events_then("unprotecting '" + r.name + "' after a take-over",
                         [&] { return uffd_writeprotect(cfg_.uffd, r.start, r.length, false, false, OnAgain::kReturn); });
      uffd_wake(cfg_.uffd, r.start, r.length);
    }
  }
  if (sched_getaffinity(0, sizeof allowed_cpus_, &allowed_cpus_) != 0) cfg_.follow_faults = false;
  if (!cfg_.fault_cpus.empty()) cfg_.follow_faults = false;
  if (!cfg_.test_no_splice && store_->lives_in_monitor()) open_splice_pipe();
  blocking_reads_ = can_block_in_read();
  fault_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "em-fault");  // visible in top/perf; failure is harmless
    pin_thread(cfg_.fault_cpus, "fault");
    if (cfg_.fault_cpus.size() == 1) fault_cpu_ = (int)cfg_.fault_cpus[0];
    tl_uffd_reader = true;
    if (blocking_reads_ && !unblock_wake_signal()) blocking_reads_ = false;  // before the uffd turns blocking
    if (blocking_reads_ && !uffd_set_nonblocking(cfg_.uffd, false)) blocking_reads_ = false;
    fault_loop();
    fault_done_ = true;
  });
  if (blocking_reads_) exit_watch_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "em-exit-watch");
    watch_exit();
  });
  evict_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "em-evict");
    pin_thread(cfg_.evict_cpus, "eviction");
    evict_loop();
  });
  if (resident_ > high_watermark()) evict_cv_.notify_one();
}

// ---------------------------------------------------------------- helpers

int Pager::region_of(uint64_t addr) const {
  // A VM has few regions, so a linear scan is fine (regions added at run time are
  // appended, not sorted in: readers never see an entry move).
  for (size_t i = 0; i < regions().size(); i++)
    if (addr >= regions_[i].start && addr < regions_[i].start + regions_[i].length) return (int)i;
  return -1;
}

const Pager::Region& Pager::region_at(uint32_t idx) const {
  for (auto& r : regions())
    if (idx >= r.first && idx < r.first + r.npages) return r;
  throw Error("EM_INTERNAL", "page index out of range");
}

uint64_t Pager::addr_of(uint32_t idx) const {
  const Region& r = region_at(idx);
  return r.start + (uint64_t)(idx - r.first) * kPageSize;
}

uint64_t Pager::key_of(uint32_t idx) const { return key_in(region_at(idx), idx); }

// ---------------------------------------------------------------- replacement policy
// (replacement.h; backend/bench/policy-sim.cc replays the bench workloads against it)

// A page became resident (or stays so after an abandoned eviction: hot = true).
void Pager::list_insert(uint32_t idx, bool hot) { policy_.insert(idx, hot, evict_clock_, cap_, cfg_.prefetch_max); }

void Pager::for_runs(const std::vector<uint32_t>& sorted, const std::function<void(const Run&)>& fn) {
  size_t i = 0;
  while (i < sorted.size()) {
    size_t j = i + 1;
    const Region& r = region_at(sorted[i]);
    while (j < sorted.size() && sorted[j] == sorted[j - 1] + 1 && sorted[j] < r.first + r.npages) j++;
    fn(Run{sorted[i], (uint32_t)(j - i)});
    i = j;
  }
}

void Pager::wake_deferred() {
  std::vector<uint32_t> w;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    w.swap(deferred_);
  }
  for (uint32_t idx : w) uffd_wake(cfg_.uffd, addr_of(idx), kPageSize);
}

// ---------------------------------------------------------------- store with retry

// Invariant 5: a store that cannot answer never leads to a zero-filled page; the
// caller waits, retrying with exponential backoff, and the state is visible in stats.
template <class F>
bool Pager::with_retry(const char* what, F&& op) {
  uint64_t backoff = kRetryMinMs;
  bool reported = false;
  auto stopping = [&] { return stop_ || (tl_evictor && evict_stop_); };
  while (!stopping()) {
    try {
      op();
      if (reported) {
        {
          std::lock_guard<std::mutex> g(store_state_mu_);
          store_state_ = "ok";
          store_error_.clear();
        }
        emit({"store-up", std::string("store ") + store_->name() + " answers again", {}, 0, 0});
      }
      return true;
    } catch (const Error& e) {
      store_retries_++;
      if (e.code() == "STORE_INTEGRITY") throw;  // retrying cannot fix a corrupt page
      {
        std::lock_guard<std::mutex> g(store_state_mu_);
        store_state_ = "retrying";
        store_error_ = std::string(what) + ": " + e.what();
      }
      if (!reported) {
        reported = true;
        emit({"store-down", std::string(what) + " failed, retrying with backoff: " + e.what(), {}, 0, 0});
      }
    }
    for (uint64_t waited = 0; waited < backoff && !stopping(); waited += 10) sleep_ms(10);
    backoff = std::min(backoff * 2, kRetryMaxMs);
  }
  return false;
}

bool Pager::store_get(std::vector<uint64_t>& keys, std::vector<uint32_t>& vers, uint8_t* out, bool* found) {
  return with_retry("fetching pages", [&] { store_->get(keys.data(), vers.data(), keys.size(), out, found); });
}
bool Pager::store_put(std::vector<uint64_t>& keys, std::vector<uint32_t>& vers, const uint8_t* data) {
  return with_retry("storing evicted pages", [&] { store_->put(keys.data(), vers.data(), keys.size(), data); });
}
// The evictor's store_put: false also when it fails in a way retrying cannot mend (a
// corrupt store, anything that is not an em::Error), so its pages stay in the guest.
bool Pager::put_or_report(std::vector<uint64_t>& keys, std::vector<uint32_t>& vers, const uint8_t* data) {
  try {
    return store_put(keys, vers, data);
  } catch (const std::exception& e) {
    report_throttled(std::string("storing evicted pages failed; they stay in the guest: ") + e.what());
    return false;
  }
}
bool Pager::store_del(std::vector<uint64_t>& keys) {
  if (keys.empty()) return true;
  return with_retry("deleting discarded pages", [&] { store_->del(keys.data(), keys.size()); });
}

// ---------------------------------------------------------------- fault thread

// Whether the fault thread may sleep in a blocking read (blocking_reads_): a wake signal
// is free, and the kernel reads a uffd without waiting on request (RWF_NOWAIT: the
// retry path below must not sleep). Probed with a 1-byte buffer, which the uffd refuses
// (EINVAL) after the VFS has accepted the flag, so no message is consumed.
bool Pager::can_block_in_read() {
  if (cfg_.test_nonblocking_reads || wake_signal() < 0) return false;
  char byte;
  return uffd_read_nowait(cfg_.uffd, &byte, 1) < 0 && errno == EINVAL;
}

// blocking_reads_: the fault thread cannot see the target exit while it sleeps in read()
// (the uffd stays silent when the target's mm goes away), so this thread watches the
// pidfd and interrupts it. Ends when the pager stops (stop_efd_).
void Pager::watch_exit() {
  struct pollfd p[2] = {{pidfd_, POLLIN, 0}, {stop_efd_, POLLIN, 0}};
  for (;;) {
    int pr = poll(p, 2, -1);
    if (pr < 0 && errno == EINTR) continue;
    if (pr < 0) {
      emit({"error", std::string("watching the target for its exit failed: ") + strerror(errno), {}, 0, 0});
      return;
    }
    if (p[1].revents) return;
    if (p[0].revents & POLLIN) {
      report_target_exit();
      wake_fault_thread();
      return;
    }
  }
}

void Pager::report_target_exit() {
  if (!exit_reported_.exchange(true)) emit({"target-exited", "process " + std::to_string(cfg_.pid) + " exited", {}, 0, 0});
  stop_ = true;
  evict_cv_.notify_all();
}

// Interrupt the fault thread's blocking read until it has left its loop: a signal that
// lands just before the read starts is lost, so it is repeated (every ms, at most 5 s).
void Pager::wake_fault_thread() {
  if (!blocking_reads_ || !fault_thread_.joinable() || fault_thread_.get_id() == std::this_thread::get_id()) return;
  for (int i = 0; i < 5000 && !fault_done_; i++) {
    interrupt_thread(fault_thread_.native_handle());
    if (!fault_done_) sleep_ms(1);
  }
}

// A failed poll or read of the uffd: false (the fault thread ends) only when the uffd
// itself is unusable; anything else is reported and retried after 10 ms, since ending
// would leave every later fault of the guest waiting forever.
bool Pager::fault_loop_error(const char* what, int err) {
  report_throttled(std::string(what) + ": " + strerror(err));
  if (err == EBADF || err == EINVAL) return false;
  sleep_ms(10);
  return !stop_;
}

// An "error" event, at most one a second (a failure that repeats every retry must not
// flood the event channel); the ones held back are counted in the next.
void Pager::report_throttled(const std::string& message) {
  uint64_t now = now_us(), last = last_error_us_.load();
  if (now - last < 1000000 || !last_error_us_.compare_exchange_strong(last, now)) {
    held_errors_++;
    return;
  }
  std::string m = message;
  if (uint64_t held = held_errors_.exchange(0)) m += " (" + std::to_string(held) + " more errors in the last second not reported)";
  emit({"error", m, {}, 0, 0});
}

// After a failure part-way through a round (fault thread): faults go back on retry_,
// REMOVE events from msgs[first_unapplied] on wait in pending_removes_, waiters of
// ranges already discarded are woken.
void Pager::requeue_round(const struct uffd_msg* msgs, size_t n, size_t first_unapplied, const std::vector<Retry>& retrying,
                          const std::vector<std::pair<uint64_t, uint64_t>>& removed) {
  for (const Retry& r : retrying) retry_.push_back(r);
  for (size_t i = 0; i < n; i++) {
    if (msgs[i].event == UFFD_EVENT_REMOVE) {
      if (i >= first_unapplied) pending_removes_.push_back({msgs[i].arg.remove.start, msgs[i].arg.remove.end});
      continue;
    }
    if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
    uint64_t addr = msgs[i].arg.pagefault.address & ~(uint64_t)(kPageSize - 1);
    int ri = region_of(addr);
    if (ri < 0) continue;
    retry_.push_back({index_in(regions_[ri], addr), Retry::of(msgs[i].arg.pagefault.flags)});
  }
  // A fault may be on the list twice now (re-queued here and by its own EAGAIN in the
  // round): keep one of each, so rounds that keep failing cannot grow the list.
  std::sort(retry_.begin(), retry_.end(), [](const Retry& a, const Retry& b) { return a.idx != b.idx ? a.idx < b.idx : a.kind < b.kind; });
  retry_.erase(std::unique(retry_.begin(), retry_.end(), [](const Retry& a, const Retry& b) { return a.idx == b.idx && a.kind == b.kind; }), retry_.end());
  for (auto& r : removed) {
    try {
      uffd_wake(cfg_.uffd, r.first, r.second - r.first);
    } catch (const std::exception&) {  // reported by the caller; the retry wakes again
    }
  }
}

void Pager::fault_loop() {
  struct uffd_msg msgs[kMaxMsgs];
  std::vector<uint32_t> fetch;
  std::vector<uint64_t> dels;
  std::vector<uint32_t> writes;
  std::vector<std::pair<uint64_t, uint64_t>> removed;  // discarded ranges: waiters are woken
  std::vector<Retry> retrying;
  while (!stop_) {
    // blocking_reads_: sleep in read() until a message comes (or stop_threads / the exit
    // watcher interrupt it). Otherwise, and while faults wait for a retry, read without
    // waiting first (under load the next faults are already queued), then sleep in ppoll.
    ssize_t got = blocking_reads_ && !retry_.empty() ? uffd_read_nowait(cfg_.uffd, msgs, sizeof msgs)
                                                     : read(cfg_.uffd, msgs, sizeof msgs);
    if (got < 0 && errno == EAGAIN) {
      // Faults put back by EAGAIN (the mm was changing) are retried after a short
      // sleep even if nothing new arrives; otherwise sleep until something does.
      // A blocking uffd (blocking_reads_, here only while retries wait) always polls
      // as EPOLLERR (userfaultfd_poll), which would make this a busy loop: then poll
      // only the stop and exit descriptors, and sleep the 200 µs until the retries.
      struct pollfd p[3] = {{blocking_reads_ ? -1 : cfg_.uffd, POLLIN, 0}, {stop_efd_, POLLIN, 0}, {pidfd_, POLLIN, 0}};
      struct timespec retry_after = {0, 200 * 1000};
      int pr = ppoll(p, 3, retry_.empty() ? nullptr : &retry_after, nullptr);
      if (pr < 0 && errno != EINTR) {
        if (!fault_loop_error("poll on the userfaultfd failed", errno)) return;
        continue;
      }
      if (stop_) return;
      if (pr > 0 && (p[2].revents & POLLIN)) {
        report_target_exit();
        return;
      }
      if (pr != 0 || retry_.empty()) continue;
      got = 0;  // timed out: just the retries
    }
    if (got < 0) {
      if (errno == EINTR) continue;
      if (!fault_loop_error("reading the userfaultfd failed", errno)) return;
      continue;
    }
    uint64_t t0 = now_us();
    size_t n = (size_t)got / sizeof(struct uffd_msg);
    fetch.clear();
    dels.clear();
    writes.clear();
    removed.clear();
    retrying.swap(retry_);
    retry_.clear();
    size_t next_msg = 0;  // messages before this one were handled (a failure re-queues the rest)
    uint32_t follow_tid = 0;
    // Start the two cache misses every fault takes (its page's metadata, and where the
    // store keeps the page) together, before the locked pass waits on the first.
    for (size_t i = 0; i < n; i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      uint64_t addr = msgs[i].arg.pagefault.address;
      int ri = region_of(addr);
      if (ri < 0) continue;
      uint32_t idx = index_in(regions_[ri], addr);
      __builtin_prefetch(&table_[idx]);
      store_->prefetch(key_in(regions_[ri], idx));
    }
    try {
      // One pass under the page-table lock: classify every fault and plan the fetch.
      {
        std::lock_guard<AdaptiveMutex> g(mu_);
        for (auto& r : pending_removes_) handle_remove(r.first, r.second, dels, removed);
        pending_removes_.clear();
        for (const Retry& r : retrying) {
          if (r.kind == Retry::kWp) {
            handle_wp(r.idx);
          } else {
            handle_missing(r.idx, fetch, dels, r.kind == Retry::kWrite);
            if (r.kind == Retry::kWrite) writes.push_back(r.idx);
          }
        }
        for (size_t i = 0; i < n; i++, next_msg = i) {
          if (msgs[i].event == UFFD_EVENT_REMOVE) {
            // The caller's madvise waits until this message is read; the zap follows.
            handle_remove(msgs[i].arg.remove.start, msgs[i].arg.remove.end, dels, removed);
            continue;
          }
          if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;  // no other events were requested
          uint64_t addr = msgs[i].arg.pagefault.address & ~(uint64_t)(kPageSize - 1);
          if (cfg_.follow_faults && follow_countdown_-- == 0) {
            follow_countdown_ = kFollowEvery;
            follow_tid = msgs[i].arg.pagefault.feat.ptid;  // 0 when the uffd lacks THREAD_ID (take-over)
          }
          int ri = region_of(addr);
          if (ri < 0) continue;
          uint32_t idx = index_in(regions_[ri], addr);
          faults_++;
          if (cfg_.test_defer_faults) {  // TEST ONLY: served from retry_ in a later round, as after EAGAIN
            retry_.push_back({idx, Retry::of(msgs[i].arg.pagefault.flags)});
            continue;
          }
          if (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
            wp_faults_++;
            handle_wp(idx);
          } else {
            bool write = msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
            handle_missing(idx, fetch, dels, write);
            // A write fault maps its page writable at once: write-protecting it would
            // only cost a second fault for the write that is about to happen.
            if (write) writes.push_back(idx);
          }
        }
        next_msg = n;
        if (!fetch.empty()) {
          std::sort(writes.begin(), writes.end());
          plan_fetch(fetch, true, &writes, fault_plan_);
        }
      }
      // Move before mapping: the UFFDIO_COPY below then wakes the faulter on this CPU.
      if (follow_tid) follow_faulter(follow_tid);
      // A thread waiting on a page that was discarded meanwhile retries: the page now
      // reads as zeros (its fault finds it absent).
      for (auto& r : removed) uffd_wake(cfg_.uffd, r.first, r.second - r.first);
      if (!dels.empty()) store_del(dels);
      if (!fetch.empty()) {
        // A drain may bring the same pages in meanwhile: fetch_planned maps only pages
        // still remote, so the worst case is one wasted store read.
        std::lock_guard<std::mutex> fg(fetch_mu_);
        fetch_planned(fault_plan_);
      }
    } catch (const std::exception& e) {
      // Nothing read may be dropped: its threads would wait forever. Every fault of this
      // round is handled again at the next (the handlers are idempotent: a page mapped
      // meanwhile meets EEXIST and its thread is woken), REMOVE events not yet applied
      // are applied first, and threads of discarded ranges are woken now.
      requeue_round(msgs, n, next_msg, retrying, removed);
      report_throttled(std::string("fault handling failed (retrying): ") + e.what());
    }
    uint64_t dt = now_us() - t0;
    for (size_t i = 0; i < n; i++) latency_.record(dt);
    if (resident_ > high_watermark()) {
      evict_cv_.notify_one();
      // Back-pressure: when faults outrun the evictor up to the cap, give it a moment
      // before taking more pages. Bounded (20 ms), so a drop that needs this thread (an
      // injected DONTNEED into a thread that is itself faulting) can never deadlock
      // against it, and a stalled store only slows faults down.
      // (not while faults wait for a retry: they are due within 200 µs)
      if (resident_ >= cap_ && !stop_ && !draining_ && retry_.empty()) {
        uint64_t w0 = now_us();
        for (int i = 0; i < 20 && resident_ >= cap_ && !stop_ && !draining_; i++) {
          std::unique_lock<std::mutex> lk(evict_mu_);
          evicted_cv_.wait_for(lk, std::chrono::milliseconds(1));
        }
        cap_waits_++;
        cap_wait_us_ += now_us() - w0;
      }
    }
  }
}

// A write to a write-protected page. Clean page: it becomes dirty (its stored copy is
// now stale) and writable. Page being evicted: the eviction is abandoned for it
// (invariant 1) unless the drop is already committed, in which case the writer waits
// until the page is gone and then faults it back from the store.
void Pager::handle_wp(uint32_t idx) {
  PageMeta& m = table_[idx];
  uint64_t addr = addr_of(idx);
  // Unprotect; if the mm is changing (an event waits in the uffd), handle this fault
  // again shortly (fault_loop's retry list): the state changes below are idempotent.
  auto unprotect = [&] {
    if (!uffd_writeprotect(cfg_.uffd, addr, kPageSize, false, false, again_mode())) retry_.push_back({idx, Retry::kWp});
  };
  switch (m.state) {
    case kResClean:
      m.state = kResDirty;
      m.flags |= kFlRef;
      unprotect();
      break;
    case kResDirty:  // armed for a reference check (or left protected by an abandoned eviction)
      if (m.flags & kFlArmed) m.flags = (uint8_t)((m.flags & ~kFlArmed) | kFlRef);
      unprotect();
      break;
    case kEvicting:
      if (m.flags & kFlDropping) {
        deferred_.push_back(idx);
      } else {
        m.flags |= kFlAbort;
        unprotect();
      }
      break;
    default:
      // Not resident any more (dropped since the fault): the writer retries and takes a
      // missing fault. Unprotect rather than only wake: if the page is in fact still
      // here (a drop that failed unseen, drop_or_probe), a bare wake would trap again
      // forever; letting the write through keeps the newest content in memory, where a
      // fetch then meets EEXIST and keeps it.
      unprotect();
  }
}

// UFFD_EVENT_REMOVE: the target discards [start, end) (QEMU: balloon inflate, virtio-mem
// unplug, free page reporting). Every page in it reads as zeros from now on: resident
// and remote pages become absent and their stored copies are deleted. A page being
// evicted has its eviction abandoned (the missing fault after the zap then finds it
// "resident" and takes the discard path). Pages the evictor is dropping are skipped:
// for private memory the evictor's own injected MADV_DONTNEED raises this event too.
void Pager::handle_remove(uint64_t start, uint64_t end, std::vector<uint64_t>& dels,
                          std::vector<std::pair<uint64_t, uint64_t>>& removed) {
  for (const Region& r : regions()) {
    uint64_t lo = std::max(start, r.start), hi = std::min(end, r.start + r.length);
    if (lo >= hi) continue;
    bool any = false;
    for (uint64_t a = lo & ~(uint64_t)(kPageSize - 1); a < hi; a += kPageSize) {
      uint32_t idx = index_in(r, a);
      PageMeta& m = table_[idx];
      switch (m.state) {
        case kAbsent:
          continue;
        case kEvicting:
          // (evict_by_splice: a page being dropped was discarded too; it is stored as zeros)
          if (!(m.flags & kFlDropping) || splice_evictions_) m.flags |= kFlAbort;  // counted when its fault comes
          continue;
        case kRemote:
          remote_--;
          break;
        default:  // kResDirty / kResClean
          list_remove(idx);
          resident_--;
          break;
      }
      if (m.flags & kFlStoreCopy) dels.push_back(key_of(idx));
      m.state = kAbsent;
      m.flags = 0;
      discards_++;
      any = true;
    }
    if (any) removed.emplace_back(lo, hi);
  }
}

// A missing fault. Remote pages are queued for one batched fetch; never-written pages
// are zero-filled; a missing fault on a page believed resident means QEMU discarded it
// (balloon, virtio-mem unplug): zeros, and the stored copy is deleted.
void Pager::handle_missing(uint32_t idx, std::vector<uint32_t>& fetch, std::vector<uint64_t>& dels, bool write) {
  PageMeta& m = table_[idx];
  uint64_t addr = addr_of(idx);
  // UFFDIO_ZEROPAGE. Unless it was done nothing changes: a duplicate fault already
  // mapped the page (wake the thread), or the mm is changing (retry this fault shortly).
  auto zero_filled = [&] {
    CopyResult z = uffd_zeropage(cfg_.uffd, addr, kPageSize, true, again_mode());
    if (z == CopyResult::kExists) uffd_wake(cfg_.uffd, addr, kPageSize);
    if (z == CopyResult::kAgain) retry_.push_back({idx, write ? Retry::kWrite : Retry::kRead});
    return z == CopyResult::kDone;
  };
  switch (m.state) {
    case kRemote:
      if (!(m.flags & kFlLost)) fetch.push_back(idx);
      return;
    case kAbsent:
      if (!zero_filled()) return;
      zero_fills_++;
      m.state = kResDirty;
      list_insert(idx, false);
      resident_++;
      return;
    case kEvicting:
      if (m.flags & kFlDropping) {
        deferred_.push_back(idx);
        return;
      }
      if (!zero_filled()) return;
      m.flags |= kFlAbort;  // discarded under the evictor: its copy-out is void
      zero_fills_++;
      discards_++;
      return;
    default:  // kResDirty / kResClean
      if (!zero_filled()) return;
      zero_fills_++;
      discards_++;
      m.state = kResDirty;
      if (m.flags & kFlStoreCopy) {
        m.flags &= ~kFlStoreCopy;
        dels.push_back(key_of(idx));
      }
      return;
  }
}

// Fetch remote pages (plus, on sequential faults, the remote pages that follow) in one
// store batch and map each contiguous run with one UFFDIO_COPY. wp=true maps them
// write-protected so the first write marks them dirty (dirty tracking).
void Pager::fetch_pages(std::vector<uint32_t>& faulted, bool wp, bool prefetch, const std::vector<uint32_t>* writes) {
  FetchPlan plan;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    plan_fetch(faulted, prefetch, writes, plan);
  }
  plan.wp = wp;
  fetch_planned(plan);
}

// Decide what one fetch brings in (mu_ held). `plan` is reused across calls by the
// fault thread, so the hot path allocates nothing once its buffers have grown.
void Pager::plan_fetch(std::vector<uint32_t>& faulted, bool prefetch, const std::vector<uint32_t>* writes, FetchPlan& plan) {
  auto is_write = [&](uint32_t idx) { return writes && std::binary_search(writes->begin(), writes->end(), idx); };
  std::sort(faulted.begin(), faulted.end());
  faulted.erase(std::unique(faulted.begin(), faulted.end()), faulted.end());
  plan.want.clear();
  plan.mark.clear();
  plan.wp = true;
  for (uint32_t idx : faulted) {
    if (table_[idx].state != kRemote) continue;
    if (!plan.want.empty() && idx <= plan.want.back()) continue;  // already covered by a prefetch run
    plan.want.push_back(idx);
    plan.mark.push_back(is_write(idx) ? kMarkWrite : kMarkFault);
    if (!prefetch || cfg_.prefetch_max == 0) continue;
    bool seq = last_fault_ != kNil && idx > last_fault_ && idx - last_fault_ <= cfg_.prefetch_max + 1;
    // A sequential writer writes what it prefetches: map the run writable too
    // (dirty), instead of taking a write-protect fault on every page of it.
    uint8_t run_mark = is_write(idx) ? kMarkPrefetchWrite : kMarkPrefetch;
    seq_streak_ = seq ? std::min<uint32_t>(seq_streak_ + 1, 16) : 0;
    last_fault_ = idx;
    if (!seq_streak_) continue;
    uint32_t n = std::min<uint32_t>(cfg_.prefetch_max, 1u << std::min<uint32_t>(seq_streak_ + 1, 8));
    const Region& r = region_at(idx);
    for (uint32_t j = idx + 1; j < r.first + r.npages && j <= idx + n; j++) {
      if (table_[j].state != kRemote || (table_[j].flags & kFlLost)) break;
      plan.want.push_back(j);
      plan.mark.push_back(run_mark);
      last_fault_ = j;
    }
  }
  size_t n = plan.want.size();
  plan.keys.resize(n);
  plan.vers.resize(n);
  for (size_t i = 0; i < n; i++) {
    plan.keys[i] = key_of(plan.want[i]);
    plan.vers[i] = table_[plan.want[i]].version;
  }
  if (plan.data.size() < n * kPageSize) plan.data.resize(n * kPageSize);  // filled by the store
  if (plan.found_cap < n) {
    plan.found.reset(new bool[n]);
    plan.found_cap = n;
  }
  std::fill(plan.found.get(), plan.found.get() + n, false);
}

// One faulted page from a store that can lend it (the embedded store): mapped straight
// from the stored block, without copying it into a buffer first. Called with fetch_mu_
// held, so no other thread can map a remote page meanwhile (only fetches do, and they
// are serialised by fetch_mu_): the copy needs no page-table lock, only the commit.
// Returns false when the store has no such path (the caller then fetches as usual).
bool Pager::map_in_place(FetchPlan& plan) {
  const uint32_t idx = plan.want[0];
  const bool map_wp = plan.wp && plan.mark[0] != kMarkWrite && plan.mark[0] != kMarkPrefetchWrite;
  const uint64_t dst = addr_of(idx);
  {
    std::lock_guard<AdaptiveMutex> g(mu_);  // a drain may have brought it in since the plan
    if (table_[idx].state != kRemote || (table_[idx].flags & kFlLost)) return true;
  }
  bool found = false, mapped = false;
  CopyResult cr = CopyResult::kDone;
  uint64_t copied = 0;
  if (!store_->view(plan.keys[0], plan.vers[0], [&](const uint8_t* page) {
        cr = uffd_copy(cfg_.uffd, dst, page, kPageSize, map_wp, true, &copied, again_mode());
        mapped = cr != CopyResult::kAgain;
      }, &found))
    return false;
  if (cr == CopyResult::kAgain) {  // the mm is changing: retry this fault shortly
    retry_.push_back({idx, map_wp ? Retry::kRead : Retry::kWrite});
    return true;
  }
  std::lock_guard<AdaptiveMutex> g(mu_);
  PageMeta& m = table_[idx];
  if (!found) {
    if (m.state == kRemote && !(m.flags & kFlLost)) {  // invariant 2/5: never zero-filled
      m.flags |= kFlLost;
      lost_pages_++;
      emit({"page-lost", "1 page known to be stored is missing from the store (restarted without persistence?): its fault is held, never zero-filled", {plan.keys[0]}, 0, 0});
    }
    return true;
  }
  if (!mapped) return true;
  bool hot = evict_clock_ - m.prev <= cap_;  // refault distance within the cap: it was hot
  // EEXIST: something mapped it behind our back; the page in memory is authoritative (dirty)
  m.state = cr == CopyResult::kExists || !map_wp ? kResDirty : kResClean;
  m.flags |= kFlStoreCopy;
  list_insert(idx, cr == CopyResult::kExists ? false : hot);
  resident_++;
  remote_--;
  if (cr == CopyResult::kExists) uffd_wake(cfg_.uffd, dst, kPageSize);
  else fetches_++;
  return true;
}

// Fetch what plan_fetch chose (store call without the page-table lock), then map it.
void Pager::fetch_planned(FetchPlan& plan) {
  const std::vector<uint32_t>& want = plan.want;
  if (want.empty()) return;
  const bool wp = plan.wp;
  uint8_t* data = plan.data.data();
  bool* found = plan.found.get();
  try {
    uint64_t t0 = now_us();
    if (want.size() == 1 && map_in_place(plan)) return;
    if (!store_get(plan.keys, plan.vers, data, found)) return;  // stopping
    // running average of what one fetch costs (per page), for the policy's arming choice
    uint64_t per_page = (now_us() - t0) / want.size();
    fetch_cost_us_.store((fetch_cost_us_.load(std::memory_order_relaxed) * 7 + per_page) / 8, std::memory_order_relaxed);
  } catch (const Error& e) {  // integrity failure: never map it; the faulting thread waits
    // Anything else (a UFFDIO_COPY that failed in map_in_place, a wake): the page is
    // still in the store, so it is not lost; the caller retries or reports.
    if (e.code() != "STORE_INTEGRITY") throw;
    if (want.size() > 1) {
      // Which page failed? One at a time: the healthy ones are mapped and only a bad one
      // is held as lost (a store answers a batch with one error for all of it).
      for (size_t k = 0; k < want.size(); k++) {
        FetchPlan one;
        one.want = {want[k]};
        one.mark = {plan.mark[k]};
        one.keys = {plan.keys[k]};
        one.vers = {plan.vers[k]};
        one.data.resize(kPageSize);
        one.found.reset(new bool[1]);
        one.found_cap = 1;
        one.wp = plan.wp;
        fetch_planned(one);
      }
      return;
    }
    std::lock_guard<AdaptiveMutex> g(mu_);
    PagerEvent ev{"page-lost", std::string("a stored page failed its integrity check and was not mapped: ") + e.what(), {}, 0, 0};
    for (uint32_t idx : want) {
      table_[idx].flags |= kFlLost;
      lost_pages_++;
      ev.pages.push_back(key_of(idx));
    }
    emit(std::move(ev));
    return;
  }
  std::lock_guard<AdaptiveMutex> g(mu_);
  PagerEvent lost{"page-lost", "", {}, 0, 0};
  // a page faulted by a write, and the prefetched run behind it, are mapped writable
  // (and so dirty); its run is split from write-protected neighbours
  auto writable_at = [&](size_t k) { return wp && (plan.mark[k] == kMarkWrite || plan.mark[k] == kMarkPrefetchWrite); };
  auto ok = [&](size_t k) { return found[k] && table_[want[k]].state == kRemote; };
  size_t i = 0;
  while (i < want.size()) {
    // a run: contiguous pages, all found, all still remote
    size_t j = i;
    const Region& r = region_at(want[i]);
    bool writable = writable_at(i);
    if (!ok(i)) {
      if (!found[i] && table_[want[i]].state == kRemote) {
        // Invariant 2/5: the store lost a page we stored. Never zero-fill it: leave the
        // fault pending (the vCPU waits, the VM is effectively paused) and say so.
        table_[want[i]].flags |= kFlLost;
        lost_pages_++;
        lost.pages.push_back(plan.keys[i]);
      }
      i++;
      continue;
    }
    while (j + 1 < want.size() && want[j + 1] == want[j] + 1 && want[j + 1] < r.first + r.npages && ok(j + 1) &&
           writable_at(j + 1) == writable)
      j++;
    size_t count = j - i + 1;
    uint64_t copied = 0;
    uint64_t dst = addr_of(want[i]);
    bool map_wp = wp && !writable;
    CopyResult cr = uffd_copy(cfg_.uffd, dst, data + i * kPageSize, count * kPageSize, map_wp, true, &copied, again_mode());
    size_t done = (size_t)(copied / kPageSize);
    for (size_t k = i; k < i + done; k++) {
      uint32_t idx = want[k];
      PageMeta& m = table_[idx];
      bool hot = evict_clock_ - m.prev <= cap_;  // refault distance within the cap: it was hot
      m.state = map_wp ? kResClean : kResDirty;
      m.flags |= kFlStoreCopy;
      list_insert(idx, hot);
      resident_++;
      remote_--;
      if (plan.mark[k] >= kMarkPrefetch) prefetched_++; else fetches_++;
    }
    if (cr == CopyResult::kAgain) {
      // The mm is changing (an event waits in the uffd): the rest of the run stays
      // remote; its faulted pages are retried shortly (kAgain happens only on the fault
      // thread, which owns retry_), prefetched ones have nobody waiting.
      for (size_t k = i + done; k <= j; k++)
        if (plan.mark[k] == kMarkFault || plan.mark[k] == kMarkWrite)
          retry_.push_back({want[k], plan.mark[k] == kMarkWrite ? Retry::kWrite : Retry::kRead});
      i = j + 1;
      continue;
    }
    if (cr == CopyResult::kExists) {
      // Something mapped this page behind our back (e.g. a second, unregistered mapping of
      // the memfd wrote it). The page in memory is then authoritative: treat it as dirty.
      uint32_t idx = want[i + done];
      PageMeta& m = table_[idx];
      m.state = kResDirty;
      m.flags |= kFlStoreCopy;
      list_insert(idx, false);
      resident_++;
      remote_--;
      uffd_wake(cfg_.uffd, addr_of(idx), kPageSize);
      i = i + done + 1;
      continue;
    }
    i = j + 1;
  }
  if (!lost.pages.empty()) {
    lost.message = std::to_string(lost.pages.size()) +
                   " page(s) known to be stored are missing from the store (restarted without persistence?): "
                   "their faults are held, never zero-filled";
    emit(std::move(lost));
  }
}

// ---------------------------------------------------------------- evictor

// Victims (ReplacementPolicy::pick), and dirty ones to arm.
void Pager::pick_victims(size_t n, std::vector<uint32_t>& out, std::vector<uint32_t>& arm) {
  // Arming costs a write-protect fault (one uffd round trip) per re-written page and
  // saves a fetch per page it keeps: worth it only when a fetch costs several round
  // trips (network or disk stores), not with the embedded store. Measured on zipf,
  // memory: 11k fewer fetches for 31k more write-protect faults: a net loss there.
  bool arm_dirty = fetch_cost_us_.load(std::memory_order_relaxed) >= kArmFetchCostUs;
  policy_.pick(n, cap_, arm_dirty, out, arm);
}

void Pager::read_pages(const std::vector<uint32_t>& idxs, uint8_t* out) {
  // idxs sorted; read contiguous runs with one call each.
  size_t pos = 0;
  std::vector<struct iovec> local, remote;
  for_runs(idxs, [&](const Run& run) {
    const Region& r = region_at(run.first);
    uint8_t* dst = out + pos * kPageSize;
    size_t bytes = (size_t)run.count * kPageSize;
    if (r.memfd) {
      off_t off = (off_t)(r.file_offset + (uint64_t)(run.first - r.first) * kPageSize);
      size_t done = 0;
      while (done < bytes) {
        ssize_t got = pread(r.fd, dst + done, bytes - done, off + (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) throw_sys("pread", "copying pages out of '" + r.name + "'", got < 0 ? errno : EIO);
        done += (size_t)got;
      }
    } else {
      struct iovec l = {dst, bytes};
      struct iovec rm = {reinterpret_cast<void*>(addr_of(run.first)), bytes};
      ssize_t got = process_vm_readv(cfg_.pid, &l, 1, &rm, 1, 0);
      if (got != (ssize_t)bytes) throw_sys("process_vm_readv", "copying pages out of '" + r.name + "'", got < 0 ? errno : EIO);
    }
    pos += run.count;
  });
}

// Drop pages from host memory: punch memfd runs, inject MADV_DONTNEED for private ones,
// through `stopped` when the caller already holds a target thread stopped (the vmsplice
// session of evict_by_splice), else by stopping one.
void Pager::drop_pages(const std::vector<uint32_t>& idxs, RemoteTask* stopped) {
  std::vector<struct iovec> anon;
  size_t runs = 0, nruns = 0;
  if (cfg_.test_fail_drops) for_runs(idxs, [&](const Run&) { nruns++; });
  for_runs(idxs, [&](const Run& run) {
    // TEST ONLY: drop the first half of the runs, then fail (a partial drop).
    if (cfg_.test_fail_drops && runs++ >= (nruns + 1) / 2) return;
    const Region& r = region_at(run.first);
    if (r.memfd) {
      off_t off = (off_t)(r.file_offset + (uint64_t)(run.first - r.first) * kPageSize);
      if (fallocate(r.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)run.count * kPageSize) != 0)
        throw_sys("fallocate(PUNCH_HOLE)", "dropping evicted pages of '" + r.name + "'");
    } else {
      anon.push_back({reinterpret_cast<void*>(addr_of(run.first)), (size_t)run.count * kPageSize});
    }
  });
  for (size_t i = 0; i < anon.size(); i += kIovMax)
    remote_madvise_dontneed(cfg_.pid, anon.data() + i, std::min<size_t>(kIovMax, anon.size() - i), stopped);
  if (cfg_.test_fail_drops && nruns > 1)
    throw Error("EM_TEST", "test-only partial drop: the later runs were not dropped", EIO);
}

// An evicted page has left host memory (mu_ held): absent if it was zero, else remote;
// prev keeps the eviction clock for its refault distance.
void Pager::mark_left(uint32_t idx, bool zero) {
  PageMeta& m = table_[idx];
  m.state = zero ? kAbsent : kRemote;
  if (!zero) remote_++;
  m.prev = evict_clock_++;
  m.next = kNil;
  resident_--;
  evictions_++;
}

// Drop the (sorted) pages; which of them left host memory: all of them, or after a
// failure part-way those probe_gone finds gone; when even that fails, the drop is
// retried, and at last every page counts as gone (see the end). `stopped`: drop_pages.
std::vector<uint8_t> Pager::drop_or_probe(const std::vector<uint32_t>& sorted, RemoteTask* stopped) {
  try {
    drop_pages(sorted, stopped);
    return std::vector<uint8_t>(sorted.size(), 1);
  } catch (const Error& e) {
    emit({"error", std::string("dropping evicted pages failed: ") + e.what(), {}, 0, 0});
  }
  try {
    return probe_gone(sorted);
  } catch (const Error& pe) {
    emit({"error", std::string("after a failed drop: ") + pe.what(), {}, 0, 0});
  }
  // Neither the drop nor the check worked. Dropping again is harmless (a punch or
  // DONTNEED of a page already gone does nothing), so try a few more times.
  for (uint32_t ms = 10; ms <= 160 && !stop_ && !evict_stop_; ms *= 2) {
    sleep_ms(ms);
    try {
      drop_pages(sorted, stopped);
      return std::vector<uint8_t>(sorted.size(), 1);
    } catch (const Error&) {
    }
  }
  // Then count every page as gone. The store holds each one's content (or it was zero),
  // so a page that is in fact still here costs nothing (a fetch meets EEXIST and keeps
  // the page in memory, a write-protect fault lets its write through); counting a page
  // that left as still here would turn its next fault into a discard: zeros.
  emit({"error", "could not drop evicted pages nor tell which left; they count as evicted (each still has its stored copy)", {}, 0, 0});
  return std::vector<uint8_t>(sorted.size(), 1);
}

// After a drop failed part-way, which of its pages are really gone from host memory:
// a page that left must become remote (its fault fetches the stored copy), not stay
// "resident" (its fault would then read as a discard: zeros, the stored copy deleted).
std::vector<uint8_t> Pager::probe_gone(const std::vector<uint32_t>& idxs) {
  std::vector<uint8_t> gone(idxs.size(), 0);
  int pagemap = -1;
  try {
    for (size_t i = 0; i < idxs.size(); i++) {
      const Region& r = region_at(idxs[i]);
      uint64_t page = idxs[i] - r.first;
      if (r.memfd) {
        off_t off = (off_t)(r.file_offset + page * kPageSize);
        off_t data = lseek(r.fd, off, SEEK_DATA);  // the next byte with data: this page unless it is a hole
        if (data < 0 && errno != ENXIO) throw_sys("lseek(SEEK_DATA)", "checking which pages a failed drop removed");
        gone[i] = data < 0 || data >= off + (off_t)kPageSize;
        continue;
      }
      if (pagemap < 0) pagemap = open_pagemap();
      uint64_t e = 0;
      ssize_t got = pread(pagemap, &e, 8, (off_t)((r.start / kPageSize + page) * 8));
      if (got != 8) throw_sys("pread", "reading the target's pagemap", got < 0 ? errno : EIO);
      gone[i] = !in_memory(e);
    }
  } catch (...) {
    if (pagemap >= 0) close(pagemap);
    throw;
  }
  if (pagemap >= 0) close(pagemap);
  return gone;
}

// Evict up to `want` pages. Returns the number of pages that left host memory.
size_t Pager::evict_batch(size_t want) {
  std::vector<uint32_t> victims, dirty, clean, arm;
  // Phase 1: choose, mark evicting, write-protect the dirty ones (invariant 1: from here
  // a guest write traps instead of being lost).
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    pick_victims(want, victims, arm);
    std::sort(victims.begin(), victims.end());
    for (uint32_t idx : victims) {
      PageMeta& m = table_[idx];
      bool is_clean = m.state == kResClean && (m.flags & kFlStoreCopy);
      m.state = kEvicting;
      m.flags &= ~(kFlAbort | kFlDropping | kFlRef | kFlArmed);
      (is_clean ? clean : dirty).push_back(idx);
    }
  }
  std::sort(arm.begin(), arm.end());
  // Write-protect `pages` (runs, outside the lock); on a failure nothing of this batch
  // has happened: the victims go back to the lists, dirty.
  auto protect_or_restore = [&](const std::vector<uint32_t>& pages) {
    try {
      for_runs(pages, [&](const Run& run) {
        uffd_writeprotect(cfg_.uffd, addr_of(run.first), (uint64_t)run.count * kPageSize, true, true);
      });
    } catch (...) {
      std::lock_guard<AdaptiveMutex> g(mu_);
      for (uint32_t idx : victims) {
        table_[idx].state = kResDirty;
        table_[idx].flags &= ~kFlAbort;
        list_insert(idx, false);
      }
      throw;
    }
  };
  // (the test-only unprotected mode skips this too: an armed page is protected for the
  // rest of its eviction, which would hide the lost-write race that mode exists to show)
  if (!cfg_.test_skip_wp) protect_or_restore(arm);
  if (victims.empty()) return 0;
  size_t runs = 0;
  bool private_pages = false;
  for_runs(dirty, [&](const Run& run) {
    runs++;
    private_pages |= !region_at(run.first).memfd;
  });
  bool in_runs = runs * 8 <= dirty.size();
  // Private dirty victims in long runs (a sequential scan): big batches from now on,
  // until a batch's are not (kRunBatch). Batches of clean pages only say nothing.
  if (!dirty.empty()) run_batches_ = private_pages && in_runs;
  // Private victims in long runs take the write-protect path below: there it costs one
  // call and one flush per run, and process_vm_readv copies out faster than vmsplice
  // plus reading the pipe (seq, alternating pairs: 2.2-2.6 against 2.9-3.1 µs a touch).
  // The splice path pays off on scattered victims, whose per-page flushes interrupt the
  // guest's CPU. A pipe holds one batch: a run-sized batch whose victims turn out
  // scattered (the first after a scan ends) takes the write-protect path too, once.
  if (splice_evictions_ && !(private_pages && in_runs) && dirty.size() <= pipe_pages_)
    return evict_by_splice(dirty, clean, in_runs, private_pages);
  // Write-protect outside the lock (the fault thread keeps serving meanwhile). Safe
  // because the pages are already marked evicting: a write-protect fault that races
  // this (left from a clean page) aborts the page's eviction, and an abort is final.
  if (!cfg_.test_skip_wp) protect_or_restore(dirty);
  // Phase 2: copy the dirty pages out and store them (invariant 3: store before drop).
  // (uninitialised: every byte is overwritten by the copy-out)
  std::unique_ptr<uint8_t[]> buf(new uint8_t[dirty.size() * kPageSize]);
  std::vector<uint8_t> zero(dirty.size(), 0);
  std::vector<uint64_t> put_keys, del_keys;
  std::vector<uint32_t> put_vers;
  bool stored = true;
  try {
    if (!dirty.empty()) read_pages(dirty, buf.get());
    // scan for zero pages before taking the lock: the fault thread needs it meanwhile
    for (size_t i = 0; i < dirty.size(); i++) zero[i] = all_zero(buf.get() + i * kPageSize);
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (size_t i = 0; i < dirty.size(); i++) {
      PageMeta& m = table_[dirty[i]];
      if (zero[i]) {  // zero pages are never stored
        if (m.flags & kFlStoreCopy) del_keys.push_back(key_of(dirty[i]));
      } else {
        put_keys.push_back(key_of(dirty[i]));
        put_vers.push_back(m.version + 1);
      }
    }
  } catch (const Error& e) {
    stored = false;
    emit({"error", std::string("eviction copy-out failed: ") + e.what(), {}, 0, 0});
  }
  if (stored && !put_keys.empty()) {
    // pack the non-zero pages to the front of buf (no copy at all when none is zero)
    for (size_t i = 0, k = 0; i < dirty.size(); i++)
      if (!zero[i]) {
        if (k != i) memmove(buf.get() + k * kPageSize, buf.get() + i * kPageSize, kPageSize);
        k++;
      }
    stored = put_or_report(put_keys, put_vers, buf.get());
  }
  if (stored) stored = store_del(del_keys);
  // Phase 3a: commit the drop for pages nobody touched meanwhile.
  std::vector<uint32_t> drop;
  std::vector<uint8_t> drop_zero;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    size_t vi = 0;
    for (size_t i = 0; i < dirty.size(); i++) {
      PageMeta& m = table_[dirty[i]];
      if (stored && !zero[i]) {
        m.version = put_vers[vi++];
        m.flags |= kFlStoreCopy;
        store_writes_++;
      }
      if (stored && zero[i]) m.flags &= ~kFlStoreCopy;
      if (!stored || (m.flags & kFlAbort)) {
        if (m.flags & kFlAbort) evict_aborts_++;
        m.flags &= ~kFlAbort;
        m.state = kResDirty;
        // it stays write-protected if no write came: the next write traps and is harmless
        list_insert(dirty[i], true);
        continue;
      }
      m.flags |= kFlDropping;
      drop.push_back(dirty[i]);
      drop_zero.push_back(zero[i]);
    }
    for (uint32_t idx : clean) {
      PageMeta& m = table_[idx];
      if (m.flags & kFlAbort) {
        evict_aborts_++;
        m.flags &= ~kFlAbort;
        m.state = kResDirty;
        list_insert(idx, true);
        continue;
      }
      m.flags |= kFlDropping;
      drop.push_back(idx);
      drop_zero.push_back(2);  // 2 = clean: dropped without a store write
    }
  }
  if (drop.empty()) return 0;
  // Drop outside the lock: for private memory this injects into the target, whose
  // threads may need the fault thread meanwhile.
  std::vector<size_t> order(drop.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return drop[a] < drop[b]; });
  std::vector<uint32_t> sorted_drop(drop.size());
  std::vector<uint8_t> sorted_zero(drop.size());
  for (size_t i = 0; i < order.size(); i++) { sorted_drop[i] = drop[order[i]]; sorted_zero[i] = drop_zero[order[i]]; }
  std::vector<uint8_t> gone = drop_or_probe(sorted_drop);
  // Phase 3b: the pages are gone from host memory.
  size_t left = 0;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (size_t i = 0; i < sorted_drop.size(); i++) {
      uint32_t idx = sorted_drop[i];
      PageMeta& m = table_[idx];
      m.flags &= ~kFlDropping;
      if (!gone[i]) {  // still resident and write-protected; the store has it: clean
        m.state = sorted_zero[i] == 1 ? kResDirty : kResClean;
        list_insert(idx, false);
        continue;
      }
      if (sorted_zero[i] == 2) clean_drops_++;
      mark_left(idx, sorted_zero[i] == 1);
      left++;
    }
  }
  wake_deferred();
  evicted_cv_.notify_all();
  return left;
}

// Give pipe `fd` room for `bytes`, or the most it may have: above
// /proc/sys/fs/pipe-max-size (1 MiB by default) only with CAP_SYS_RESOURCE, so halve
// until the kernel agrees. Returns the pipe's size in bytes.
static size_t size_pipe(int fd, size_t bytes, const char* what) {
  for (size_t want = bytes; want >= kPageSize; want /= 2) {
    int got = fcntl(fd, F_SETPIPE_SZ, (int)want);
    if (got >= 0) return (size_t)got;
    if (errno != EPERM && errno != EBUSY && errno != EINVAL) break;
  }
  int size = fcntl(fd, F_GETPIPE_SZ);
  if (size < 0) throw_sys("fcntl(F_GETPIPE_SZ)", what);
  return (size_t)size;
}

// The pipe evict_by_splice passes memfd pages through, sized for one batch of evictBatch
// pages (fewer if the system refuses that size); scattered batches use kSpliceBatch of it.
void Pager::open_splice_pipe() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) throw_sys("pipe2", "creating the eviction pipe");
  pipe_r_ = fds[0];
  pipe_w_ = fds[1];
  pipe_pages_ = size_pipe(pipe_w_, std::max<uint32_t>(cfg_.evict_batch, 1) * kPageSize, "sizing the eviction pipe") / kPageSize;
  splice_batch_ = std::min(pipe_pages_, kSpliceBatch);
  splice_evictions_ = pipe_pages_ > 0;
}

// The private pages among `sorted_private` that a write would not land in in place:
// not present, or present but not exclusively this mapping's anonymous page (the
// shared zero page a UFFDIO_ZEROPAGE or a read mapped, a page shared with another
// mapping): a write copies such a page first, so a pipe holding the old one would miss
// it. Read from /proc/PID/pagemap (PM_MMAP_EXCLUSIVE, bit 56), one read per run.
std::vector<uint32_t> Pager::copied_on_write(const std::vector<uint32_t>& sorted_private) {
  if (evict_pagemap_fd_ < 0) evict_pagemap_fd_ = open_pagemap();
  std::vector<uint32_t> out;
  std::vector<uint64_t> ent;
  for_runs(sorted_private, [&](const Run& run) {
    ent.resize(run.count);
    off_t off = (off_t)(addr_of(run.first) / kPageSize * sizeof(uint64_t));
    ssize_t n = pread(evict_pagemap_fd_, ent.data(), run.count * sizeof(uint64_t), off);
    if (n != (ssize_t)(run.count * sizeof(uint64_t))) throw_sys("pread", "reading the target's pagemap", n < 0 ? errno : EIO);
    for (uint32_t i = 0; i < run.count; i++) {
      bool present = ent[i] >> 63 & 1, exclusive = ent[i] >> 56 & 1, file = ent[i] >> 61 & 1;
      if (!present || !exclusive || file) out.push_back(run.first + i);
    }
  });
  return out;
}

// No page of any process is merged by KSM now, and none can be before a batch ends:
// ksmd is stopped (run 0), and a restarted ksmd merges a page only on its second full
// scan. A KSM page is write-protected in every mapping and copied on the next write,
// and pagemap cannot tell one that is mapped once from an exclusive page.
bool Pager::ksm_quiet() {
  auto value = [](const char* path) -> long {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 0 : -1;  // (no KSM in this kernel, or no such counter)
    char b[32] = {0};
    ssize_t n = read(fd, b, sizeof b - 1);
    close(fd);
    return n > 0 ? strtol(b, nullptr, 10) : -1;
  };
  return value("/sys/kernel/mm/ksm/run") == 0 && value("/sys/kernel/mm/ksm/pages_shared") == 0 &&
         value("/sys/kernel/mm/ksm/ksm_zero_pages") == 0;
}

void Pager::open_pipe_in_target() {
  tpipe_ = open_target_pipe(cfg_.pid);
  size_t size = size_pipe(tpipe_.read_fd, pipe_pages_ * kPageSize, "sizing the eviction pipe in the target");
  // (the same limits as our own pipe: a smaller one only shortens the next batches)
  pipe_pages_ = std::min(pipe_pages_, size / kPageSize);
  splice_batch_ = std::min(splice_batch_, pipe_pages_);
  // Read only what a finished vmsplice put there: never wait on the target.
  int fl = fcntl(tpipe_.read_fd, F_GETFL);
  if (fl < 0 || fcntl(tpipe_.read_fd, F_SETFL, fl | O_NONBLOCK) != 0) throw_sys("fcntl(O_NONBLOCK)", "setting up the eviction pipe in the target");
}

// Evict without write-protecting (splice_evictions_: the store in this process). The
// evictor's write-protects and punches each flush the page from the CPU the guest runs
// on, and on a VM each such interrupt costs that CPU 4-8 µs (docs/bench-pager.md); this
// needs the punch (memfd) or the injected MADV_DONTNEED (private memory) only:
//  1. splice the dirty victims into a pipe: the pipe takes a reference to each page
//     itself, not a copy, so a guest write before step 2 lands in what the pipe holds.
//     Memfd pages are spliced from the memfd here; private pages are vmspliced from
//     inside the target into a pipe whose write end it holds (open_pipe_in_target).
//     A write lands in a private page in place only if the page is exclusively this
//     mapping's (anonymous-exclusive pages are reused on write even while referenced);
//     the others are write-protected first (step 0);
//  2. punch / MADV_DONTNEED them out: from here the guest cannot write them (its faults
//     wait on kFlDropping until step 4);
//  3. read the pipe: each page's last content (invariant 1 without write-protect);
//  4. store, then mark remote and wake the waiting faults.
// The pages are stored after they left the guest, which invariant 3 forbids for a store
// that outlives the monitor: this one dies with the monitor and every page in it. If
// the store fails, the pages are put back with UFFDIO_COPY. A page QEMU discards
// meanwhile (missing fault before the punch, REMOVE event) is not stored: it reads as
// zeros. Clean victims are dropped as in evict_batch.
size_t Pager::evict_by_splice(const std::vector<uint32_t>& dirty, const std::vector<uint32_t>& clean, bool in_runs,
                               bool private_pages) {
  // Next batch: short when these victims were scattered, full when they came in runs.
  // (private pages: each batch stops a target thread, which costs more than the waits
  // of faults on a longer batch: full batches)
  splice_batch_ = in_runs || private_pages ? pipe_pages_ : std::min(pipe_pages_, kSpliceBatch);
  // 1. splice (dirty is sorted: each pipe then holds its pages in the order of `dirty`):
  // memfd runs from the memfd here, private runs by one vmsplice inside the target.
  size_t spliced_bytes = 0, tspliced_bytes = 0;
  bool splice_ok = true;
  std::unique_ptr<RemoteTask> task;
  // 0. Private pages a write would be copied out of (the zero page, KSM or shared pages:
  // copied_on_write) cannot rely on the pipe: they are write-protected first, as in
  // evict_batch, so such a write traps and aborts their eviction. All of them while KSM
  // may merge pages. (The test-only unprotected mode skips this as it skips the rest.)
  if (private_pages && !cfg_.test_skip_wp && !cfg_.test_skip_cow_wp) {
    std::vector<uint32_t> priv_dirty;
    for (uint32_t idx : dirty)
      if (!region_at(idx).memfd) priv_dirty.push_back(idx);
    if (!priv_dirty.empty()) {
      try {
        std::vector<uint32_t> wp = ksm_quiet() ? copied_on_write(priv_dirty) : priv_dirty;
        for_runs(wp, [&](const Run& run) {
          uffd_writeprotect(cfg_.uffd, addr_of(run.first), (uint64_t)run.count * kPageSize, true, true);
        });
      } catch (const Error& e) {
        splice_ok = false;
        emit({"error", std::string("eviction copy-out failed: ") + e.what(), {}, 0, 0});
      }
    }
  }
  if (splice_ok) try {
    std::vector<struct iovec> priv;
    for_runs(dirty, [&](const Run& run) {
      const Region& r = region_at(run.first);
      if (!r.memfd) {
        priv.push_back({reinterpret_cast<void*>(addr_of(run.first)), (size_t)run.count * kPageSize});
        return;
      }
      off64_t off = (off64_t)(r.file_offset + (uint64_t)(run.first - r.first) * kPageSize);
      size_t left = (size_t)run.count * kPageSize;
      while (left > 0) {
        ssize_t n = splice(r.fd, &off, pipe_w_, nullptr, left, SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw_sys("splice", "passing evicted pages of '" + r.name + "' to the eviction pipe", n < 0 ? errno : EIO);
        left -= (size_t)n;
        spliced_bytes += (size_t)n;
      }
    });
    if (!priv.empty()) {
      if (tpipe_.read_fd < 0) open_pipe_in_target();
      // One stop of one target thread for the vmsplice and the drop (step 2): an
      // injection session costs more than the calls in it.
      task = borrow_thread(cfg_.pid);
      remote_vmsplice(cfg_.pid, tpipe_.target_write_fd, priv.data(), priv.size(), &tspliced_bytes, task.get());
    }
  } catch (const Error& e) {
    splice_ok = false;
    emit({"error", std::string("eviction copy-out failed: ") + e.what(), {}, 0, 0});
  }
  std::unique_ptr<uint8_t[]> buf(new uint8_t[dirty.size() * kPageSize]);
  auto read_exact = [&](int fd, uint8_t* dst, size_t bytes) {
    for (size_t done = 0; done < bytes;) {
      ssize_t n = read(fd, dst + done, bytes - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw_sys("read", "reading the eviction pipe", n < 0 ? errno : EIO);
      done += (size_t)n;
    }
  };
  auto read_pipe = [&] {  // every byte spliced, also after a failure (the pipes must be empty for the next batch)
    if (!splice_ok) {
      read_exact(pipe_r_, buf.get(), spliced_bytes);
      read_exact(tpipe_.read_fd, buf.get(), tspliced_bytes);
      return;
    }
    size_t pos = 0;
    for_runs(dirty, [&](const Run& run) {
      size_t bytes = (size_t)run.count * kPageSize;
      read_exact(region_at(run.first).memfd ? pipe_r_ : tpipe_.read_fd, buf.get() + pos, bytes);
      pos += bytes;
    });
  };
  // 2. commit the drop: dirty pages discarded by QEMU meanwhile, and clean pages written
  // meanwhile, stay (kFlAbort); so does everything if the splice failed.
  std::vector<uint32_t> drop;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    auto keep = [&](uint32_t idx) {
      PageMeta& m = table_[idx];
      if (m.flags & kFlAbort) evict_aborts_++;
      m.flags &= ~kFlAbort;
      m.state = kResDirty;
      list_insert(idx, true);
    };
    for (uint32_t idx : dirty) {
      if (!splice_ok || (table_[idx].flags & kFlAbort)) keep(idx);
      else { table_[idx].flags |= kFlDropping; drop.push_back(idx); }
    }
    for (uint32_t idx : clean) {
      if (table_[idx].flags & kFlAbort) keep(idx);
      else { table_[idx].flags |= kFlDropping; drop.push_back(idx); }
    }
  }
  if (!splice_ok) {
    try { read_pipe(); } catch (const Error& e) { emit({"error", std::string("eviction: ") + e.what(), {}, 0, 0}); }
    if (drop.empty()) return 0;
  }
  // TEST ONLY (test_skip_wp): read before the punch, as a copy-out without protection
  // would: a write between the read and the punch is lost (the race test must see it).
  bool read_done = false;
  if (cfg_.test_skip_wp && splice_ok) {
    read_pipe();
    read_done = true;
  }
  // TEST ONLY: widen the window before the punch to what a store write takes in the
  // write-protect path, so the race tests see writes land in it.
  if (cfg_.test_race_window_ms) sleep_ms(cfg_.test_race_window_ms);
  std::sort(drop.begin(), drop.end());
  std::vector<uint8_t> gone = drop_or_probe(drop, task.get());  // (the thread stopped for the vmsplice drops too)
  task.reset();  // the target's thread goes on
  // 3. the last content of every spliced page
  bool have_data = splice_ok;
  if (splice_ok && !read_done) {
    try {
      read_pipe();
    } catch (const Error& e) {
      have_data = false;
      emit({"error", std::string("eviction: ") + e.what(), {}, 0, 0});
    }
  }
  // 4. store the dirty pages that left, not zero, not discarded: packed to the front of
  // buf in place (both buf and drop are in page order), so put_slot[k] says where each is.
  std::vector<uint64_t> put_keys, del_keys;
  std::vector<uint32_t> put_vers;
  std::vector<uint8_t> kind(drop.size(), 2);  // 0 store, 1 zero, 2 clean or not gone, 3 discarded
  std::vector<size_t> put_slot(drop.size(), 0), put_from;
  std::vector<uint8_t> zero(dirty.size(), 0);
  if (have_data)  // before taking the lock: the fault thread needs it meanwhile
    for (size_t d = 0; d < dirty.size(); d++) zero[d] = all_zero(buf.get() + d * kPageSize);
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (size_t i = 0, d = 0; i < drop.size(); i++) {
      while (d < dirty.size() && dirty[d] < drop[i]) d++;
      if (d == dirty.size() || dirty[d] != drop[i]) continue;  // a clean victim
      PageMeta& m = table_[drop[i]];
      if (!gone[i] || m.state != kEvicting) continue;
      if (m.flags & kFlAbort) { kind[i] = 3; continue; }
      if (have_data && zero[d]) { kind[i] = 1; continue; }
      kind[i] = 0;
      put_keys.push_back(key_of(drop[i]));
      put_vers.push_back(m.version + 1);
      put_slot[i] = put_from.size();
      put_from.push_back(d);
    }
  }
  // pack (put_from is increasing and put_from[k] >= k: no page is overwritten before it moved)
  if (have_data)
    for (size_t k = 0; k < put_from.size(); k++)
      if (put_from[k] != k) memmove(buf.get() + k * kPageSize, buf.get() + put_from[k] * kPageSize, kPageSize);
  // (TEST ONLY test_fail_puts: every other store of a batch fails, as a full store would; or every one)
  bool refused = !put_keys.empty() && (cfg_.test_fail_puts == 2 || (cfg_.test_fail_puts == 1 && (++test_puts_ & 1)));
  bool stored = have_data && !refused && (put_keys.empty() || put_or_report(put_keys, put_vers, buf.get()));
  // 5a. A page the store did not take goes back into the guest, mapped without the lock
  // (the fault thread may need it to read the event that holds the mm changing; the
  // page's own faults wait on kFlDropping meanwhile). EEXIST: the page was written back
  // behind our back (another mapping of the memfd): what is in memory is authoritative.
  enum : uint8_t { kNotBack = 0, kBack, kBackFailed };
  std::vector<uint8_t> back(drop.size(), kNotBack);
  if (!stored)
    for (size_t i = 0; i < drop.size(); i++) {
      if (!gone[i] || kind[i] != 0) continue;
      back[i] = kBackFailed;
      if (!have_data) continue;
      uint64_t copied = 0;
      try {
        CopyResult cr = uffd_copy(cfg_.uffd, addr_of(drop[i]), buf.get() + put_slot[i] * kPageSize, kPageSize, false, false, &copied);
        if (copied == kPageSize || cr == CopyResult::kExists) back[i] = kBack;
      } catch (const Error& e) {
        report_throttled(std::string("putting back a page the store did not take: ") + e.what());
      }
    }
  // 5b. commit: remote / absent / back in the guest.
  size_t left = 0, vi = 0;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (size_t i = 0; i < drop.size(); i++) {
      uint32_t idx = drop[i];
      PageMeta& m = table_[idx];
      m.flags &= ~kFlDropping;
      if (!gone[i]) {  // still in the guest: dirty ones writable, clean ones still protected
        bool was_clean = !std::binary_search(dirty.begin(), dirty.end(), idx);
        m.state = was_clean && !(m.flags & kFlAbort) ? kResClean : kResDirty;
        m.flags &= ~kFlAbort;
        list_insert(idx, false);
        continue;
      }
      if (kind[i] == 0 && !stored) {
        if (back[i] == kBack) {
          m.state = kResDirty;
          m.flags &= ~kFlAbort;
          list_insert(idx, true);
          continue;
        }
        // No content to put back: the page is lost; its faults stay held (invariant 2).
        m.flags |= kFlLost;
        lost_pages_++;
        emit({"page-lost", "an evicted page could be neither stored nor put back: its fault is held", {key_of(idx)}, 0, 0});
      }
      bool discarded = kind[i] == 3 || (m.flags & kFlAbort);
      m.flags &= ~kFlAbort;
      bool zero = kind[i] == 1 || discarded;
      if (kind[i] == 0 && stored) {
        m.version = put_vers[vi++];
        m.flags |= kFlStoreCopy;
        store_writes_++;
        if (discarded) del_keys.push_back(key_of(idx));  // QEMU discarded it after it was read
      } else if (zero && (m.flags & kFlStoreCopy)) {
        del_keys.push_back(key_of(idx));
      }
      if (kind[i] == 2) clean_drops_++;
      if (discarded) discards_++;
      if (zero) m.flags &= ~kFlStoreCopy;
      mark_left(idx, zero);
      left++;
    }
  }
  if (!del_keys.empty()) store_del(del_keys);
  wake_deferred();
  evicted_cv_.notify_all();
  return left;
}

// Watermarks: eviction starts once residency passes cap - slack (high) and goes down
// to cap - 2*slack (low), so the cap itself is normally never crossed; faults that
// would cross it wait briefly for the evictor (back-pressure in fault_loop).
// The eviction batch now: kRunBatch while private victims come in runs (config caps
// evict_batch at kRunBatch).
size_t Pager::batch_pages() const { return run_batches_ ? kRunBatch : cfg_.evict_batch; }
uint64_t Pager::slack() const {
  uint32_t cap = cap_;
  return std::max<uint64_t>(1, std::min<uint64_t>(std::max<uint64_t>(16, std::min<uint64_t>(batch_pages(), cap / 16)), cap / 4));
}
uint64_t Pager::high_watermark() const {
  uint32_t cap = cap_;
  return cap > slack() ? cap - slack() : 0;
}
uint64_t Pager::low_watermark() const {
  uint32_t cap = cap_;
  return cap > 2 * slack() ? cap - 2 * slack() : 0;
}

void Pager::evict_loop() {
  // The evictor works in the background of the fault path: on a small machine a
  // runnable evictor would otherwise delay the fault thread's wake-ups. Niced, it
  // yields to the fault thread; back-pressure at the cap still gives it the CPU it needs.
  // (Best effort: a failure only leaves the default priority.)
  if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), kEvictorNice) != 0) {
    emit({"error", std::string("could not lower the evictor's priority: ") + strerror(errno), {}, 0, 0});
  }
  tl_evictor = true;
  uint32_t idle_backoff_ms = 0;  // the wait after a round that evicted nothing (grows while rounds keep failing)
  while (!stop_ && !evict_stop_ && !draining_) {
    place_evictor();
    {
      std::unique_lock<std::mutex> lk(evict_mu_);
      evict_cv_.wait_for(lk, std::chrono::milliseconds(500),
                         [&] { return stop_ || evict_stop_ || (!draining_ && resident_ > high_watermark()); });
    }
    if (stop_ || evict_stop_ || draining_ || resident_ <= high_watermark()) continue;
    uint32_t cap = cap_;
    uint64_t low = low_watermark();
    uint64_t total = resident_ > low ? resident_ - low : 0;
    bool report = total > 4096;  // a big shrink: show progress
    uint64_t done = 0, last_report = now_us();
    bool stalled = false;
    while (!stop_ && !evict_stop_ && !draining_ && cap_ == cap) {
      // (the watermarks follow the batch size, larger while run_batches_)
      low = low_watermark();
      if (resident_ <= low) break;
      // A run batch costs a stop of the target whatever its size: below the high
      // watermark, wait for a whole batch to gather instead of trickling small ones
      // (when the faults come slower than the evictor goes).
      if (run_batches_ && resident_ <= high_watermark()) break;
      size_t want = (size_t)std::min<uint64_t>(batch_pages(), resident_ - low);
      if (splice_evictions_ && !run_batches_) want = std::min(want, splice_batch_);  // fits the pipe (kSpliceBatch)
      size_t got = 0;
      try {
        got = evict_batch(want);
      } catch (const std::exception& e) {
        report_throttled(std::string("eviction failed: ") + e.what());
      }
      done += got;
      if (got) evict_batches_++;
      if (report && now_us() - last_report > 250000) {
        last_report = now_us();
        emit({"progress", "evicting to the new cap", {}, done, total});
      }
      if (got == 0) {  // nothing left this round (all victims busy, or a failure)
        stalled = true;
        break;
      }
      idle_backoff_ms = 0;
    }
    if (report && done) emit({"progress", "evicted to the cap", {}, done, done});
    if (stalled) {
      // Still above the watermark: waiting on evict_cv_ would return at once. Back off
      // (1 ms doubling to 1 s while rounds keep failing) instead of spinning, unless
      // the cap changes or the pager stops.
      idle_backoff_ms = idle_backoff_ms ? std::min<uint32_t>(idle_backoff_ms * 2, 1000) : 1;
      std::unique_lock<std::mutex> lk(evict_mu_);
      evict_cv_.wait_for(lk, std::chrono::milliseconds(idle_backoff_ms), [&] { return stop_ || evict_stop_ || draining_ || cap_ != cap; });
    }
  }
}

// ---------------------------------------------------------------- control

PagerStats Pager::stats() {
  PagerStats s{};
  s.faults = faults_; s.zero_fills = zero_fills_; s.fetches = fetches_; s.evictions = evictions_;
  s.clean_drops = clean_drops_; s.store_writes = store_writes_; s.prefetched = prefetched_;
  s.wp_faults = wp_faults_; s.discards = discards_; s.evict_aborts = evict_aborts_;
  s.store_retries = store_retries_; s.lost_pages = lost_pages_;
  s.cap_waits = cap_waits_; s.cap_wait_us = cap_wait_us_; s.evict_batches = evict_batches_;
  s.fault_cpu = fault_cpu_;
  s.evict_mode = splice_evictions_ ? "splice" : "write-protect";
  s.resident = resident_; s.cap = cap_; s.remote = remote_; s.total_pages = table_.size();
  s.metadata_bytes = table_.bytes();
  s.draining = draining_;
  {
    std::lock_guard<std::mutex> g(store_state_mu_);
    s.store_state = lost_pages_ ? "lost" : store_state_;
    s.store_error = store_error_;
  }
  s.latency = latency_.summary();
  return s;
}

void Pager::set_cap(uint32_t pages) {
  cap_ = pages;
  evict_cv_.notify_one();
}

void Pager::stop_threads() {
  // The evictor first, while the fault thread still reads the uffd: a drop of private
  // memory in flight raises UFFD_EVENT_REMOVE messages that only the fault thread reads.
  evict_stop_ = true;
  if (store_) store_->cancel();
  evict_cv_.notify_all();
  if (evict_thread_.joinable() && evict_thread_.get_id() != std::this_thread::get_id()) evict_thread_.join();
  stop_ = true;
  if (stop_efd_ >= 0) {
    uint64_t one = 1;
    ssize_t w = write(stop_efd_, &one, sizeof one);
    (void)w;
  }
  evict_cv_.notify_all();
  wake_fault_thread();  // blocking_reads_ (a no-op otherwise: the stop eventfd ends its ppoll)
  if (exit_watch_thread_.joinable() && exit_watch_thread_.get_id() != std::this_thread::get_id()) exit_watch_thread_.join();
  if (fault_thread_.joinable() && fault_thread_.get_id() != std::this_thread::get_id()) fault_thread_.join();
  if (evict_thread_.joinable() && evict_thread_.get_id() != std::this_thread::get_id()) evict_thread_.join();
}

// Invariant 6: bring every page back, unprotect, unregister, and close the target's
// uffd; the fault thread keeps serving the guest until the range is unregistered.
void Pager::detach() {
  draining_ = true;
  evict_cv_.notify_all();
  if (evict_thread_.joinable()) evict_thread_.join();  // no eviction in flight from here on
  std::vector<uint32_t> remote;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (uint32_t i = 0; i < table_.size(); i++)
      if (table_[i].state == kRemote) remote.push_back(i);
  }
  uint64_t total = remote.size(), done = 0, last_report = 0;
  emit({"progress", "draining pages back", {}, 0, total});
  for (size_t i = 0; i < remote.size() && !stop_; i += kDrainBatch) {
    std::vector<uint32_t> chunk(remote.begin() + i, remote.begin() + std::min(remote.size(), i + kDrainBatch));
    {
      std::lock_guard<std::mutex> fg(fetch_mu_);
      fetch_pages(chunk, false, false);
    }
    done += chunk.size();
    if (now_us() - last_report > 200000 || done == total) {
      last_report = now_us();
      emit({"progress", "draining pages back", {}, done, total});
    }
  }
  if (stop_) throw Error("EM_DETACH_ABORTED", "detach interrupted: the target exited or the monitor is stopping");
  if (lost_pages_ > 0)
    throw Error("EM_PAGES_LOST", std::to_string((uint64_t)lost_pages_) +
                                     " page(s) are missing from the store; the VM stays attached and waits on them. "
                                     "Restore the store's data and detach again.");
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (uint32_t i = 0; i < table_.size(); i++)
      if (table_[i].state == kRemote)
        throw Error("EM_DETACH_INCOMPLETE", "some pages could not be brought back; the VM stays attached");
  }
  for (auto& r : regions()) {
    uffd_writeprotect(cfg_.uffd, r.start, r.length, false);
    uffd_unregister(cfg_.uffd, r.start, r.length);  // wakes every waiter
  }
  stop_threads();
  if (tpipe_.target_write_fd >= 0) {  // the eviction pipe's end inside the target
    // Every page is back: a descriptor left open in the target is reported, not a reason
    // to keep the VM attached.
    try {
      close_target_fd(cfg_.pid, tpipe_.target_write_fd);
    } catch (const Error& e) {
      emit({"error", std::string("detach: the eviction pipe stays open inside the target: ") + e.what(), {}, 0, 0});
    }
    tpipe_.target_write_fd = -1;
  }
  if (cfg_.target_uffd >= 0) {
    // The target held its own reference for crash safety; the VM is whole again, so close it.
    RemoteTask task(cfg_.pid);
    long rc = task.syscall(SYS_close, cfg_.target_uffd);
    if (rc < 0) throw Error("EM_SYSCALL", "closing the userfaultfd inside the target failed", (int)-rc, "close");
  }
  close(cfg_.uffd);
  cfg_.uffd = -1;
}

void Pager::abandon() {
  stop_threads();
}

}  // namespace em
