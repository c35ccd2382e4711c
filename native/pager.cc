#include "pager.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "attach.h"
#include "error.h"
#include "inject.h"
#include "pager_internal.h"
#include "procfs.h"
#include "uffd.h"
#include "wake_signal.h"

namespace em {

using namespace pager_detail;

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
  for (const RegionConfig& rc : cfg_.regions) total += rc.length / kPageSize;
  if (total >= kNil)  // (page indices are 32-bit: 16 TiB of guest RAM)
    throw Error("EM_BAD_REGION", std::to_string(total) + " pages of guest RAM; the pager takes at most " + std::to_string(kNil - 1) + " (16 TiB)");
  total = 0;
  for (size_t ci = 0; ci < cfg_.regions.size(); ci++) {
    check_new_region(cfg_.regions, ci, 0);
    regions_[ci] = make_region(cfg_.regions[ci], (uint32_t)ci, total);
    total += regions_[ci].npages;
  }
  std::sort(regions_.get(), regions_.get() + cfg_.regions.size(), [](const Region& a, const Region& b) { return a.start < b.start; });
  nregions_.store(cfg_.regions.size(), std::memory_order_release);
  if (const char* failed = table_.grow((uint32_t)total)) throw_sys(failed, "allocating the page table");
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
    std::vector<uint32_t> dels;
    std::vector<std::pair<uint64_t, uint64_t>> removed;
    {
      std::lock_guard<AdaptiveMutex> g(mu_);
      for (ssize_t i = 0; got > 0 && i < got / (ssize_t)sizeof(struct uffd_msg); i++)
        if (msgs[i].event == UFFD_EVENT_REMOVE) handle_remove(msgs[i].arg.remove.start, msgs[i].arg.remove.end, dels, removed);
    }
    discard_stored(dels);
    struct timespec ts = {0, 200 * 1000};
    nanosleep(&ts, nullptr);
  }
  throw Error("EM_UFFD_BUSY", what + ": the target's memory map kept changing for 2 s (EAGAIN)", EAGAIN, "UFFDIO_WRITEPROTECT");
}

PagerEvent error_event(const std::string& what, const std::exception& e) {
  PagerEvent ev{"error", what + ": " + e.what(), {}, 0, 0};
  ev.err = errno_of(e);
  if (auto* em = dynamic_cast<const Error*>(&e)) ev.syscall = em->syscall();
  return ev;
}

PagerEvent error_event(const std::string& what, int err, const char* syscall) {
  PagerEvent ev{"error", what + ": " + strerror(err), {}, 0, 0};
  ev.err = err;
  ev.syscall = syscall;
  return ev;
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
  if (rc != 0) emit(error_event(std::string("could not pin the ") + which + " thread", rc, "pthread_setaffinity_np"));
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
      // The attach's own error is what the caller gets. A uffd left in the target is
      // found by the next attach, which then reports it as left by a dead monitor
      // (EM_UFFD_PRESENT) and offers the take-over: nothing is lost either way.
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
  if (const char* failed = table_.grow((uint32_t)added)) {
    int e = errno;
    close_fresh(0);
    throw_sys(failed, "growing the page table for hot-added memory", e);
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
      emit(error_event("hot-added region", e));
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
    for (auto& r : regions())
      settle_events_then("unprotecting '" + r.name + "' after a take-over",
                         [&] { return uffd_writeprotect(cfg_.uffd, r.start, r.length, false, false, OnAgain::kReturn); });
    // Wake only once every region is unprotected: a settle loop drops the fault messages
    // it reads, so a thread woken before a later region's settle could fault again into
    // it and never be woken. From here on the fault thread reads every message.
    for (auto& r : regions()) uffd_wake(cfg_.uffd, r.start, r.length);
  }
  if (sched_getaffinity(0, sizeof allowed_cpus_, &allowed_cpus_) != 0) cfg_.follow_faults = false;
  if (!cfg_.fault_cpus.empty()) cfg_.follow_faults = false;
  if (!cfg_.test_no_splice && store_->lives_in_monitor()) open_splice_pipe();
  blocking_reads_ = can_block_in_read();
  fault_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "em-fault");  // visible in top/perf; failure is harmless
    block_process_signals();
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
    block_process_signals();
    watch_exit();
  });
  start_evictor();
}

void Pager::start_evictor() {
  evict_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "em-evict");
    block_process_signals();
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
  // Every waiter gets its wake even if one fails (a failure is reported, not thrown:
  // the rest would wait forever).
  for (uint32_t idx : w) {
    try {
      uffd_wake(cfg_.uffd, addr_of(idx), kPageSize);
    } catch (const std::exception& e) {
      report_throttled(error_event("waking a fault that waited on an eviction", e));
    }
  }
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
    report_throttled(error_event("storing evicted pages failed; they stay in the guest", e));
    return false;
  }
}
// The evictor's store_del: false also when it fails in a way retrying cannot mend, so a
// batch never ends half-way (its victims left evicting, its deferred faults unwoken).
bool Pager::del_or_report(std::vector<uint64_t>& keys) {
  try {
    return store_del(keys);
  } catch (const std::exception& e) {
    report_throttled(error_event("deleting stored copies failed", e));
    return false;
  }
}
bool Pager::store_del(std::vector<uint64_t>& keys) {
  if (keys.empty()) return true;
  return with_retry("deleting discarded pages", [&] { store_->del(keys.data(), keys.size()); });
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
  // (after the flags: a detach holding join_mu_ while it joins a stalled evictor is
  // released by them)
  std::lock_guard<std::mutex> j(join_mu_);
  if (evict_thread_.joinable() && evict_thread_.get_id() != std::this_thread::get_id()) evict_thread_.join();
  stop_ = true;
  if (stop_efd_ >= 0) {
    uint64_t one = 1;
    // An eventfd write of 1 fails only if the counter would overflow (EAGAIN), i.e. it
    // is already signalled: either way the readers see it.
    ssize_t w = write(stop_efd_, &one, sizeof one);
    (void)w;
  }
  evict_cv_.notify_all();
  wake_fault_thread();  // blocking_reads_ (a no-op otherwise: the stop eventfd ends its ppoll)
  if (exit_watch_thread_.joinable() && exit_watch_thread_.get_id() != std::this_thread::get_id()) exit_watch_thread_.join();
  if (fault_thread_.joinable() && fault_thread_.get_id() != std::this_thread::get_id()) fault_thread_.join();
  if (evict_thread_.joinable() && evict_thread_.get_id() != std::this_thread::get_id()) evict_thread_.join();
}

// One step of the drain. A page the mm was changing under (a discard by QEMU in flight:
// its UFFD_EVENT_REMOVE waits for the fault thread) stays remote; it is asked for again
// without holding any lock, so the fault thread can read that event meanwhile.
void Pager::drain_chunk(std::vector<uint32_t> chunk) {
  for (int attempt = 0; !chunk.empty() && !stop_ && attempt < kDrainAgainTries; attempt++) {
    if (attempt) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    {
      std::lock_guard<std::mutex> fg(fetch_mu_);
      fetch_pages(chunk, false, false);
    }
    std::lock_guard<AdaptiveMutex> g(mu_);
    chunk.erase(std::remove_if(chunk.begin(), chunk.end(), [&](uint32_t idx) { return table_[idx].state != kRemote || (table_[idx].flags & kFlLost); }), chunk.end());
  }
}

// Invariant 6: bring every page back, unprotect, unregister, and close the target's
// uffd; the fault thread keeps serving the guest until the range is unregistered.
void Pager::detach() {
  if (unregistered_upto_ == 0) drain_all();
  else retire_gone_regions();  // (run again: a block may have been unmapped since)
  // Unregister region by region. A detach run again after a failure here goes on from the
  // region that failed (one already unregistered would answer ENOENT). Once one region is
  // unregistered the evictor stays stopped: every page is resident, and a page it evicted
  // from an unregistered region would come back as zeros.
  auto gone = [&](size_t i) { return i < gone_.size() && gone_[i]; };
  try {
    const auto& rs = regions();
    for (; unregistered_upto_ < rs.size(); unregistered_upto_++) {
      const size_t i = unregistered_upto_;
      if (gone(i)) continue;
      try {
        uffd_writeprotect(cfg_.uffd, rs[i].start, rs[i].length, false);
        uffd_unregister(cfg_.uffd, rs[i].start, rs[i].length);  // wakes every waiter
        any_unregistered_ = true;
      } catch (const Error& e) {
        if (e.err() != ENOENT) throw;
        retire_gone_regions();  // unmapped since the drain looked?
        if (!gone(i)) throw;
      }
    }
  } catch (const Error& e) {
    std::lock_guard<std::mutex> j(join_mu_);
    bool paging = !any_unregistered_ && !stop_ && !evict_stop_ && !evict_thread_.joinable();
    if (paging) {
      draining_ = false;
      start_evictor();
    }
    throw Error(e.code(), std::string(e.what()) + (paging ? "; the VM stays attached" : "; every page is back but the VM is only partly detached (no eviction meanwhile): detach again to finish"), e.err(), e.syscall());
  }
  stop_threads();
  if (tpipe_.target_write_fd >= 0) {  // the eviction pipe's end inside the target
    // Every page is back: a descriptor left open in the target is reported, not a reason
    // to keep the VM attached.
    try {
      close_target_fd(cfg_.pid, tpipe_.target_write_fd);
    } catch (const Error& e) {
      emit(error_event("detach: the eviction pipe stays open inside the target", e));
    }
    tpipe_.target_write_fd = -1;
  }
  if (cfg_.target_uffd >= 0) {
    // The target held its own reference for crash safety; the VM is whole again, so close
    // it, through whichever of its threads can be stopped (its main thread may sleep
    // uninterruptibly). On failure a detach run again only tries this again.
    close_target_fd(cfg_.pid, cfg_.target_uffd);
    cfg_.target_uffd = -1;
  }
  close(cfg_.uffd);
  cfg_.uffd = -1;
}

// A RAM block QEMU unmapped while attached (a DIMM unplugged) has nothing to drain into
// and cannot be unregistered (its ioctls answer ENOENT, no mapping is registered there
// any more). Found by the evictor (a batch failing on it) or by a detach: its pages count
// as discarded, as if QEMU had announced it (stored copies deleted), that is reported,
// and detach passes over the block. (Regions a detach already unregistered are not
// registered either, and are not gone: skipped.)
void Pager::retire_gone_regions() {
  const auto& rs = regions();
  gone_.resize(rs.size(), false);
  const auto registered = uffd_registered_ranges(cfg_.pid);  // (one read of smaps: it walks QEMU's page tables)
  auto still_registered = [&](const Region& r) {
    for (const auto& [lo, hi] : registered)
      if (lo < r.start + r.length && hi > r.start) return true;
    return false;
  };
  for (size_t i = 0; i < rs.size(); i++) {
    const Region& r = rs[i];
    if (gone_[i] || i < unregistered_upto_ || still_registered(r)) continue;
    gone_[i] = true;
    std::vector<uint32_t> dels;
    std::vector<std::pair<uint64_t, uint64_t>> removed;
    uint64_t stored = 0;
    {
      std::lock_guard<AdaptiveMutex> g(mu_);
      for (uint32_t p = 0; p < r.npages; p++) stored += table_[r.first + p].state == kRemote;
      handle_remove(r.start, r.start + r.length, dels, removed);
    }
    discard_stored(dels);
    emit({"error", "RAM block '" + r.name + "' is no longer mapped in the target (unplugged while attached): its " + std::to_string(stored) +
                       " evicted pages had nowhere to come back to and were dropped; detach passes over it", {}, 0, 0});
  }
}

// Detach, first part: stop the evictor and bring every remote page back. On failure the
// VM stays attached, with its evictor again.
void Pager::drain_all() {
  draining_ = true;
  evict_cv_.notify_all();
  {
    std::lock_guard<std::mutex> j(join_mu_);
    if (evict_thread_.joinable()) evict_thread_.join();  // no eviction in flight from here on
  }
  try {
    retire_gone_regions();
    std::vector<uint32_t> remote;
    {
      std::lock_guard<AdaptiveMutex> g(mu_);
      for (uint32_t i = 0; i < table_.size(); i++)
        if (table_[i].state == kRemote) remote.push_back(i);
    }
    uint64_t total = remote.size(), done = 0, last_report = 0;
    emit({"progress", "draining pages back", {}, 0, total});
    for (size_t i = 0; i < remote.size() && !stop_; i += kDrainBatch) {
      drain_chunk(std::vector<uint32_t>(remote.begin() + i, remote.begin() + std::min(remote.size(), i + kDrainBatch)));
      done += std::min(remote.size(), i + kDrainBatch) - i;
      if (now_us() - last_report > 200000 || done == total) {
        last_report = now_us();
        emit({"progress", "draining pages back", {}, done, total});
      }
    }
    if (stop_) throw Error("EM_DETACH_ABORTED", "detach interrupted: the target exited or the monitor is stopping");
    if (lost_pages_ > 0)
      throw Error("EM_PAGES_LOST", std::to_string((uint64_t)lost_pages_) +
                                       " page(s) are missing from the store; the VM stays attached and waits on them. "
                                       "Restore the store's data (they are asked for again every few seconds) and detach again.");
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (uint32_t i = 0; i < table_.size(); i++)
      if (table_[i].state == kRemote)
        throw Error("EM_DETACH_INCOMPLETE", "some pages could not be brought back; the VM stays attached");
  } catch (...) {
    // The VM stays attached: it gets its evictor back (the drain brought pages in above
    // the cap; resize and back-pressure work again). Not when the pager is stopping.
    std::lock_guard<std::mutex> j(join_mu_);  // (an abandon meanwhile sets evict_stop_ first)
    if (!stop_ && !evict_stop_ && !evict_thread_.joinable()) {
      draining_ = false;
      start_evictor();
    }
    throw;
  }
}

void Pager::abandon() {
  stop_threads();
}

}  // namespace em
