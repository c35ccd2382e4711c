// The pager's evictor: keeps residency under the cap by batches of victims, copied
// out (write-protect or splice) and dropped (punch or injected MADV_DONTNEED).
#include "pager.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
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
  // (std::exception, not only em::Error: a thread that cannot be created or memory that
  // cannot be had must not leave these pages kFlDropping, their faults waiting forever)
  try {
    drop_pages(sorted, stopped);
    return std::vector<uint8_t>(sorted.size(), 1);
  } catch (const std::exception& e) {
    emit(error_event("dropping evicted pages failed", e));
  }
  try {
    return probe_gone(sorted);
  } catch (const std::exception& pe) {
    emit(error_event("after a failed drop", pe));
  }
  // Neither the drop nor the check worked. Dropping again is harmless (a punch or
  // DONTNEED of a page already gone does nothing), so try a few more times.
  for (uint32_t ms = 10; ms <= 160 && !stop_ && !evict_stop_; ms *= 2) {
    sleep_ms(ms);
    try {
      drop_pages(sorted, stopped);
      return std::vector<uint8_t>(sorted.size(), 1);
    } catch (const std::exception&) {  // (tried again; the end below reports it)
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
    if (!deleting_.empty()) {
      // (their stored copies are being deleted: evicted now, the new copy could go first)
      victims.erase(std::remove_if(victims.begin(), victims.end(), [&](uint32_t idx) {
                      if (!deleting_.count(idx)) return false;
                      list_insert(idx, false);
                      return true;
                    }),
                    victims.end());
    }
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
  } catch (const std::exception& e) {
    stored = false;
    emit(error_event("eviction copy-out failed", e));
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
  if (stored) stored = del_or_report(del_keys);
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
  // Phase 3b: the pages are gone from host memory. One QEMU discarded meanwhile
  // (UFFD_EVENT_REMOVE set kFlAbort) reads as zeros: absent, its stored copy deleted.
  size_t left = 0;
  std::vector<uint64_t> discarded_keys;
  {
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (size_t i = 0; i < sorted_drop.size(); i++) {
      uint32_t idx = sorted_drop[i];
      PageMeta& m = table_[idx];
      m.flags &= ~kFlDropping;
      bool discarded = m.flags & kFlAbort;
      m.flags &= ~kFlAbort;
      if (!gone[i]) {  // still resident and write-protected; the store has it: clean
        m.state = sorted_zero[i] == 1 || discarded ? kResDirty : kResClean;
        list_insert(idx, false);
        continue;
      }
      if (sorted_zero[i] == 2) clean_drops_++;
      if (discarded) {
        discards_++;
        if (m.flags & kFlStoreCopy) discarded_keys.push_back(key_of(idx));
        m.flags &= ~kFlStoreCopy;
      }
      mark_left(idx, sorted_zero[i] == 1 || discarded);
      left++;
    }
  }
  if (!discarded_keys.empty()) del_or_report(discarded_keys);  // (this thread's later puts follow it)
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

// Bytes an earlier batch left in an eviction pipe (a read that failed part-way, or an
// injected vmsplice interrupted at its time-out after it had put some pages in) would be
// read as the next batch's pages and stored under their keys: read and drop them first.
// (That earlier batch kept its pages in the guest or counted them as not stored.)
void Pager::discard_stale_pipe(int fd, const char* what) {
  int queued = 0;
  if (ioctl(fd, FIONREAD, &queued) != 0) throw_sys("ioctl(FIONREAD)", std::string("checking ") + what);
  if (queued <= 0) return;
  char sink[kPageSize];
  for (int left = queued; left > 0;) {
    ssize_t n = read(fd, sink, std::min<size_t>(sizeof sink, (size_t)left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_sys("read", std::string("emptying ") + what, n < 0 ? errno : EIO);
    left -= (int)n;
  }
  emit({"error", std::string(what) + " held " + std::to_string(queued) + " bytes of an earlier batch; discarded", {}, 0, 0});
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
  try {
    // TEST ONLY: a page of 0xee bytes left in the pipe, as by an earlier batch whose read
    // failed part-way (mode 2 keeps it, and puts just one in: proves the test can fail; it
    // shifts every later batch by a page). (Scattered batches only: they leave room.)
    if (cfg_.test_stale_pipe && !in_runs && ++test_splice_batches_ % 16 == 0 && (cfg_.test_stale_pipe == 1 || test_splice_batches_ == 16)) {
      std::vector<uint8_t> stray(kPageSize, 0xee);
      if (write(pipe_w_, stray.data(), stray.size()) != (ssize_t)stray.size()) throw_sys("write", "test: a stray page into the eviction pipe");
    }
    // Each pipe must start empty: its bytes are read back as this batch's pages, in order.
    if (cfg_.test_stale_pipe != 2) discard_stale_pipe(pipe_r_, "the eviction pipe");
    if (tpipe_.read_fd >= 0) discard_stale_pipe(tpipe_.read_fd, "the eviction pipe in the target");
  } catch (const std::exception& e) {
    // Nothing spliced: step 2 puts every victim back, the next batch tries again.
    splice_ok = false;
    emit(error_event("eviction", e));
  }
  // 0. Private pages a write would be copied out of (the zero page, KSM or shared pages:
  // copied_on_write) cannot rely on the pipe: they are write-protected first, as in
  // evict_batch, so such a write traps and aborts their eviction. All of them while KSM
  // may merge pages. (The test-only unprotected mode skips this as it skips the rest.)
  if (splice_ok && private_pages && !cfg_.test_skip_wp && !cfg_.test_skip_cow_wp) {
    std::vector<uint32_t> priv_dirty;
    for (uint32_t idx : dirty)
      if (!region_at(idx).memfd) priv_dirty.push_back(idx);
    if (!priv_dirty.empty()) {
      try {
        std::vector<uint32_t> wp = ksm_quiet() ? copied_on_write(priv_dirty) : priv_dirty;
        for_runs(wp, [&](const Run& run) {
          uffd_writeprotect(cfg_.uffd, addr_of(run.first), (uint64_t)run.count * kPageSize, true, true);
        });
      } catch (const std::exception& e) {
        splice_ok = false;
        if (errno_of(e) == ENOENT) look_for_gone_ = true;
        emit(error_event("eviction copy-out failed", e));
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
  } catch (const std::exception& e) {
    splice_ok = false;
    if (errno_of(e) == EFAULT || errno_of(e) == ENOENT) look_for_gone_ = true;
    emit(error_event("eviction copy-out failed", e));
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
    try { read_pipe(); } catch (const std::exception& e) { emit(error_event("eviction", e)); }
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
    } catch (const std::exception& e) {
      have_data = false;
      emit(error_event("eviction", e));
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
      } catch (const std::exception& e) {
        report_throttled(error_event("putting back a page the store did not take", e));
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
        // No content to put back: the page is lost; its faults stay held (invariant 2),
        // and any copy the store holds is older, so it is never fetched. (Unless QEMU
        // discarded it meanwhile: then it reads as zeros and nothing is lost.)
        if (!(m.flags & kFlAbort)) {
          m.flags |= kFlLost;
          lost_pages_++;
          unrecoverable_.insert(idx);
          emit({"page-lost", "an evicted page could be neither stored nor put back: its fault is held", {key_of(idx)}, 0, 0});
        }
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
  if (!del_keys.empty()) del_or_report(del_keys);
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

// Running or waiting for a CPU (state R), as opposed to sleeping on the store, the
// target (an injection) or its condition variable.
bool Pager::evictor_runnable() const {
  pid_t tid = evict_tid_;
  char state = 0;
  unsigned long flags = 0;
  return tid > 0 && task_stat(getpid(), tid, &state, &flags) && state == 'R';
}

void Pager::evict_loop() {
  // The evictor works in the background of the fault path: on a small machine a
  // runnable evictor would otherwise delay the fault thread's wake-ups. Niced, it
  // yields to the fault thread; back-pressure at the cap still gives it the CPU it needs.
  // (Best effort: a failure only leaves the default priority.)
  if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), kEvictorNice) != 0) {
    emit(error_event("could not lower the evictor's priority", errno, "setpriority"));
  }
  tl_evictor = true;
  evict_tid_ = (pid_t)syscall(SYS_gettid);
  uint32_t idle_backoff_ms = 0;  // the wait after a round that evicted nothing (grows while rounds keep failing)
  while (!stop_ && !evict_stop_ && !draining_) {
    place_evictor();
    {
      std::unique_lock<std::mutex> lk(evict_mu_);
      evict_cv_.wait_for(lk, std::chrono::milliseconds(500),
                         [&] { return stop_ || evict_stop_ || (!draining_ && resident_ > high_watermark()); });
    }
    if (lost_pages_ && !stop_ && !evict_stop_ && !draining_ && now_us() - last_lost_retry_us_ >= kLostRetryUs) {
      try {
        retry_lost();
      } catch (const std::exception& e) {
        report_throttled(error_event("asking the store again for lost pages failed", e));
      }
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
      const uint64_t resident = resident_;  // (read once: a discard on the fault thread may lower it meanwhile)
      if (resident <= low) break;
      // A run batch costs a stop of the target whatever its size: below the high
      // watermark, wait for a whole batch to gather instead of trickling small ones
      // (when the faults come slower than the evictor goes).
      if (run_batches_ && resident_ <= high_watermark()) break;
      size_t want = (size_t)std::min<uint64_t>(batch_pages(), resident - low);
      if (splice_evictions_ && !run_batches_) want = std::min(want, splice_batch_);  // fits the pipe (kSpliceBatch)
      size_t got = 0;
      try {
        got = evict_batch(want);
      } catch (const std::exception& e) {
        report_throttled(error_event("eviction failed", e));
        if (errno_of(e) == ENOENT) look_for_gone_ = true;
      }
      // No registered mapping where a victim was (write-protect: ENOENT; vmsplice of
      // private pages: EFAULT): QEMU may have unmapped a RAM block (a DIMM unplugged).
      // Its pages leave the lists, or every batch would fail on them.
      if (look_for_gone_) {
        look_for_gone_ = false;
        try {
          retire_gone_regions();
        } catch (const std::exception& re) {
          report_throttled(error_event("looking for RAM blocks the target unmapped", re));
        }
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

}  // namespace em
