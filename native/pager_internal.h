// What the pager's translation units share (pager.cc: set-up, store calls and control;
// pager_fault.cc: the fault thread; pager_evict.cc: the evictor): tuning constants and
// small helpers. Internal to the pager; not part of its interface (pager.h).
#pragma once
#include <time.h>

#include <cstddef>
#include <cstdint>

#include "uffd.h"

namespace em {
namespace pager_detail {

inline constexpr size_t kMaxMsgs = 64;           // uffd messages read per batch
inline constexpr size_t kDrainBatch = 256;       // pages fetched per drain step
inline constexpr uint64_t kLostRetryUs = 2000000;  // pages held as lost are asked for again this often
inline constexpr size_t kLostRetryBatch = 256;     // at most this many of them at a time
inline constexpr uint64_t kCapWaitNoProgressUs = 20000;  // at the cap, faults wait for the evictor until it stalls this long
inline constexpr uint64_t kCapWaitMaxUs = 1000000;        // and never longer than this per fault round
inline constexpr int kDrainAgainTries = 2000;      // 1 ms apart: a drain step waits this long for the mm to settle
inline constexpr int kIovMax = 1024;
inline constexpr uint64_t kRetryMinMs = 50, kRetryMaxMs = 5000;
inline constexpr int kEvictorNice = 10;
inline constexpr uint32_t kFollowEvery = 256;  // faults between checks of where the faulting thread runs
inline constexpr uint64_t kArmFetchCostUs = 30;  // ~4 uffd round trips on this class of machine
// Pages per splice eviction of scattered pages (evict_by_splice): a fault on one of them
// waits from its punch until the batch is stored, so such batches are kept short.
// Measured (pinned zipf, 2 runs each): 64-page batches 1.60-1.66 µs a touch, 256-page
// ones 1.71-1.76; the write-protect path gains nothing from shorter batches (1.79-1.84
// either way). Victims in long runs (a sequential scan) go in full evictBatch batches:
// there the evictor's throughput matters (64-page batches: 4x the cap waits on seq).
inline constexpr size_t kSpliceBatch = 64;
// Pages per batch while private victims come in long runs (run_batches_): each such
// batch stops a target thread to inject MADV_DONTNEED, a fixed ~0.5 ms here, so a
// 256-page batch spent most of its time on that stop and capped a sequential scan's
// speed (private seq, pinned: 2.1-2.3 µs a touch with 256-page batches, 1.43 with 1024).
inline constexpr size_t kRunBatch = 1024;
// True on the fault thread, the uffd's only reader: its ioctls must not wait out EAGAIN
// (see OnAgain in uffd.h), everyone else's may.
inline thread_local bool tl_uffd_reader = false;
inline OnAgain again_mode() { return tl_uffd_reader ? OnAgain::kReturn : OnAgain::kWait; }
inline thread_local bool tl_evictor = false;  // stop_threads stops the evictor first (evict_stop_)

inline bool all_zero(const uint8_t* p) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < kPageSize / 8; i += 4)
    if (w[i] | w[i + 1] | w[i + 2] | w[i + 3]) return false;
  return true;
}
inline void sleep_ms(uint64_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)((ms % 1000) * 1000000)};
  nanosleep(&ts, nullptr);
}

}  // namespace pager_detail
}  // namespace em
