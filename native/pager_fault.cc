// The pager's fault thread: reads userfaultfd events in batches and resolves them
// (missing faults from the store or as zero pages, write-protect faults, discards).
#include "pager.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "attach.h"
#include "error.h"
#include "inject.h"
#include "pager_internal.h"
#include "uffd.h"
#include "wake_signal.h"

namespace em {

using namespace pager_detail;

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
      // Nothing else sees the exit in this mode: report it and keep watching, in steps
      // short enough that a stopping pager does not wait on this thread.
      report_throttled(error_event("watching the target for its exit failed (retrying)", errno, "poll"));
      for (int i = 0; i < 100 && !stop_; i++) sleep_ms(10);
      if (stop_) return;
      continue;
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
bool Pager::fault_loop_error(const char* what, int err, const char* syscall) {
  if (err == EBADF || err == EINVAL) {
    // The end of this VM's paging: said once and always (never held back by the
    // throttle), since every later fault of the guest now waits.
    PagerEvent ev = error_event(what, err, syscall);
    ev.message += "; the fault thread stops: the guest's faults are no longer served";
    emit(std::move(ev));
    return false;
  }
  report_throttled(error_event(what, err, syscall));
  sleep_ms(10);
  return !stop_;
}

// An "error" event, at most one a second (a failure that repeats every retry must not
// flood the event channel); the ones held back are counted in the next.
void Pager::report_throttled(const std::string& message) { report_throttled(PagerEvent{"error", message, {}, 0, 0}); }

void Pager::report_throttled(PagerEvent ev) {
  uint64_t now = now_us(), last = last_error_us_.load();
  if (now - last < 1000000 || !last_error_us_.compare_exchange_strong(last, now)) {
    held_errors_++;
    return;
  }
  if (uint64_t held = held_errors_.exchange(0)) ev.message += " (" + std::to_string(held) + " more errors in the last second not reported)";
  emit(std::move(ev));
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
  std::vector<uint32_t> dels;  // pages whose stored copy goes (queue_discard)
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
        if (!fault_loop_error("poll on the userfaultfd failed", errno, "ppoll")) return;
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
      if (!fault_loop_error("reading the userfaultfd failed", errno, "read")) return;
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
          if (ri < 0) {
            // Registered with this uffd but in no region we serve (a take-over that left out
            // a region the dead monitor had added): its thread waits. Say so, loudly.
            char where[32];
            snprintf(where, sizeof where, "0x%llx", (unsigned long long)addr);
            report_throttled(std::string("a fault at ") + where + " is outside every region this pager serves; its thread waits (was a hot-added region left out of a take-over?)");
            continue;
          }
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
      discard_stored(dels);
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
      report_throttled(error_event("fault handling failed (retrying)", e));
      // Pages already discarded in this round: their stored copies still go (and the
      // evictor may take them again either way).
      try {
        discard_stored(dels);
      } catch (const std::exception& e2) {
        report_throttled(error_event("deleting discarded pages' stored copies failed", e2));
      }
    }
    uint64_t dt = now_us() - t0;
    for (size_t i = 0; i < n; i++) latency_.record(dt);
    if (resident_ > high_watermark()) {
      evict_cv_.notify_one();
      // Back-pressure: when faults outrun the evictor up to the cap, wait for it before
      // taking more pages, for as long as it evicts or at least runs: a busy host that
      // leaves the (niced) evictor little CPU slows the guest down instead of letting it
      // run past the cap (a fixed 20 ms let a guest reach 1.6x its cap on a loaded
      // 2-CPU machine). An evictor that neither evicted for 20 ms nor runs is waiting on
      // something: then this fault round goes on, so a drop that needs this thread (an
      // injected DONTNEED into a thread that is itself faulting) can never deadlock
      // against it, and a stalled store only slows faults down. At most 1 s a round.
      // (not while faults wait for a retry: they are due within 200 µs)
      if (resident_ >= cap_ && !stop_ && !draining_ && retry_.empty()) {
        uint64_t w0 = now_us(), progress_at = w0, seen = evictions_;
        while (resident_ >= cap_ && !stop_ && !draining_) {
          uint64_t t = now_us();
          if (evictions_ != seen) {
            seen = evictions_;
            progress_at = t;
          } else if (t - progress_at >= kCapWaitNoProgressUs) {
            if (t - w0 >= kCapWaitMaxUs || !evictor_runnable()) break;
            progress_at = t;  // (runnable: look again in 20 ms)
          }
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

void Pager::queue_discard(uint32_t idx, std::vector<uint32_t>& dels) {
  dels.push_back(idx);
  deleting_.insert(idx);
}

// The stored copies of pages QEMU discarded go (retried while the store is down); until
// then the evictor does not touch those pages (deleting_), whose guest may already have
// written them again: their next copy is stored after this delete, never before it.
void Pager::discard_stored(std::vector<uint32_t>& dels) {
  if (dels.empty()) return;
  auto unfence = [&] {  // (whether the delete worked or threw)
    std::lock_guard<AdaptiveMutex> g(mu_);
    for (uint32_t idx : dels) deleting_.erase(deleting_.find(idx));
    dels.clear();
  };
  try {
    std::vector<uint64_t> keys;
    keys.reserve(dels.size());
    for (uint32_t idx : dels) keys.push_back(key_of(idx));
    store_del(keys);
  } catch (...) {
    unfence();
    throw;
  }
  unfence();
}

// UFFD_EVENT_REMOVE: the target discards [start, end) (QEMU: balloon inflate, virtio-mem
// unplug, free page reporting). Every page in it reads as zeros from now on: resident
// and remote pages become absent and their stored copies are deleted. A page being
// evicted has its eviction abandoned (the missing fault after the zap then finds it
// "resident" and takes the discard path); one whose drop is under way is committed as
// discarded by the evictor.
void Pager::handle_remove(uint64_t start, uint64_t end, std::vector<uint32_t>& dels,
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
          // Its eviction commits it as discarded (absent, any stored copy deleted), also
          // when the drop is under way. (This event is only asked for when every region is
          // a memfd, whose drops are punches: it is always QEMU's discard, never ours.)
          m.flags |= kFlAbort;  // counted when its fault comes
          continue;
        case kRemote:
          remote_--;
          break;
        default:  // kResDirty / kResClean
          list_remove(idx);
          resident_--;
          break;
      }
      if (m.flags & kFlStoreCopy) queue_discard(idx, dels);
      unmark_lost(m);  // (a lost page QEMU discards reads as zeros: nothing is lost any more)
      unrecoverable_.erase(idx);
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
void Pager::handle_missing(uint32_t idx, std::vector<uint32_t>& fetch, std::vector<uint32_t>& dels, bool write) {
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
        queue_discard(idx, dels);
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
    if (!unrecoverable_.empty() && unrecoverable_.count(idx)) continue;  // (its fault stays held)
    if (!plan.want.empty() && idx <= plan.want.back()) {
      // Already in another fault's prefetch run: it is a fault all the same (mapped
      // writable if written, counted as a fetch, and retried if the copy meets EAGAIN:
      // its thread waits on it).
      size_t at = (size_t)(std::lower_bound(plan.want.begin(), plan.want.end(), idx) - plan.want.begin());
      if (at < plan.want.size() && plan.want[at] == idx && plan.mark[at] >= kMarkPrefetch)
        plan.mark[at] = is_write(idx) ? kMarkWrite : kMarkFault;
      continue;
    }
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
    if (table_[idx].state != kRemote) return true;
  }
  bool found = false, mapped = false;
  CopyResult cr = CopyResult::kDone;
  uint64_t copied = 0;
  if (!store_->view(plan.keys[0], plan.vers[0], [&](const uint8_t* page) {
        // (never waits out EAGAIN: a drain holding fetch_mu_ would keep the fault thread
        // from reading the event the mm waits on; the drain asks again itself)
        cr = uffd_copy(cfg_.uffd, dst, page, kPageSize, map_wp, true, &copied, OnAgain::kReturn);
        mapped = cr != CopyResult::kAgain;
      }, &found))
    return false;
  if (cr == CopyResult::kAgain) {  // the mm is changing: retry this fault shortly
    if (tl_uffd_reader) retry_.push_back({idx, map_wp ? Retry::kRead : Retry::kWrite});
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
  if (m.state != kRemote) {
    // Only a drain maps in place concurrently with the fault thread, which may have
    // discarded the page meanwhile (UFFD_EVENT_REMOVE: absent, its count already moved)
    // and zero-filled it (resident: our copy met EEXIST). A copy that landed on a
    // discarded page leaves it resident with that content: track it as such.
    if (m.state == kAbsent && cr == CopyResult::kDone) {
      m.state = kResDirty;
      list_insert(idx, false);
      resident_++;
    }
    if (cr == CopyResult::kExists) uffd_wake(cfg_.uffd, dst, kPageSize);
    return true;
  }
  unmark_lost(m);
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

void Pager::unmark_lost(PageMeta& m) {
  if (!(m.flags & kFlLost)) return;
  m.flags &= ~kFlLost;
  lost_pages_--;
}

// Pages held as lost are asked for again every few seconds (by the evictor, which has
// the time): if the store's data was restored (a backup, a node back), they are mapped
// and the threads waiting on them run on, and a detach can finish.
void Pager::retry_lost() {
  last_lost_retry_us_ = now_us();
  constexpr uint64_t kSlice = 65536;  // (the table lock is held for one slice at a time)
  uint64_t cursor = 0;
  // Batch after batch while the store has them again; the first batch it still lacks
  // entirely ends the round (the next is due in kLostRetryUs).
  while (lost_pages_ && !stop_ && !evict_stop_ && !draining_) {
    std::vector<uint32_t> batch;
    while (cursor < table_.size() && batch.size() < kLostRetryBatch) {
      std::lock_guard<AdaptiveMutex> g(mu_);
      for (uint64_t end = std::min<uint64_t>(cursor + kSlice, table_.size()); cursor < end && batch.size() < kLostRetryBatch; cursor++) {
        uint32_t i = (uint32_t)cursor;
        if (table_[i].state == kRemote && (table_[i].flags & kFlLost) && !unrecoverable_.count(i)) batch.push_back(i);
      }
    }
    if (batch.empty()) return;
    uint64_t before = lost_pages_;
    {
      // Never wait for the fault thread's fetch: it may be retrying a store that is
      // down until the pager stops, and stopping joins this thread first.
      std::unique_lock<std::mutex> fg(fetch_mu_, std::try_to_lock);
      if (!fg.owns_lock()) return;
      fetch_pages(batch, true, false);
    }
    if (lost_pages_ >= before) return;
  }
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
      // (asked for again: counted and reported once; one mapped or discarded meanwhile is not lost)
      if ((table_[idx].flags & kFlLost) || table_[idx].state != kRemote) continue;
      table_[idx].flags |= kFlLost;
      lost_pages_++;
      ev.pages.push_back(key_of(idx));
    }
    if (!ev.pages.empty()) emit(std::move(ev));
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
      if (!found[i] && table_[want[i]].state == kRemote && !(table_[want[i]].flags & kFlLost)) {
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
    // (never waits out EAGAIN holding mu_: see map_in_place)
    CopyResult cr = uffd_copy(cfg_.uffd, dst, data + i * kPageSize, count * kPageSize, map_wp, true, &copied, OnAgain::kReturn);
    size_t done = (size_t)(copied / kPageSize);
    for (size_t k = i; k < i + done; k++) {
      uint32_t idx = want[k];
      PageMeta& m = table_[idx];
      bool hot = evict_clock_ - m.prev <= cap_;  // refault distance within the cap: it was hot
      m.state = map_wp ? kResClean : kResDirty;
      m.flags |= kFlStoreCopy;
      unmark_lost(m);
      list_insert(idx, hot);
      resident_++;
      remote_--;
      if (plan.mark[k] >= kMarkPrefetch) prefetched_++; else fetches_++;
    }
    if (cr == CopyResult::kAgain) {
      // The mm is changing (an event waits in the uffd): the rest of the run stays
      // remote; on the fault thread (which owns retry_) its faulted pages are retried
      // shortly, prefetched ones have nobody waiting; a drain asks again itself.
      if (tl_uffd_reader)
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
      unmark_lost(m);
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

}  // namespace em
