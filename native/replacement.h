// The pager's replacement policy: which resident pages leave first. One implementation,
// used by the pager (native/pager*.cc, over its PageTable) and by the trace-driven
// simulator (backend/bench/policy-sim.cc, over a vector of PageMeta), so what the
// simulator measures is this code.
//
// Refault-rate replacement ('refault', the default). The pager does not see a resident
// page being used (a dirty page is writable), only its refaults: how many evictions it
// spent away before it was needed again. A page's mean refault distance (its last 3
// refaults, kept in PageMeta::pad while it is remote) estimates how often it is used;
// victims are the pages with the lowest estimate. A resident page cannot confirm its
// estimate, so it ages. How fast, and whether a single quick refault outweighs the
// mean, depends on whether the hot set holds still or moves: per window of cap/16
// evictions, a refault far sooner than its page's mean (1/8 of it) is a surprise, and
// more than 20% surprises mean the hot set moves. While it holds still, means are plain
// averages and age one octave every 8 caps' worth of evictions (single distances are
// noisy: ~6% fewer fetches on zipf than the moving constants); while it moves, a sooner
// refault replaces the mean and pages age an octave a cap (new hot pages count as hot
// at once, old ones leave). Both make one
// priority, the aging clock at insertion plus 127 - lg (lg: log2 of the mean distance in
// 1/8 octaves relative to the cap), and pages wait in a ring of FIFO lists, one per
// priority: insert, remove and pick are O(1). Sequential runs of pages that are not hot
// are used once: they go on the scan list, which is evicted first, most recently used
// first (see insert). 'fifo' is FluidMem's / umap's first in, first out, for comparison.
//
// The caller holds whatever lock guards the table; the policy only touches the links,
// flags and pad of PageMeta and its own lists.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "page_table.h"

namespace em {

// The policy's constants. The pager uses these defaults; the simulator varies them
// (rr/key=value) to explore.
struct PolicyTuning {
  // Two sets of estimator constants, chosen per window of evictions (see adapt): while
  // the hot set holds still, estimates should average out the noise of single refault
  // distances (exponentially spread under a fixed popularity) and age slowly; while it
  // moves, a page that turns hot must count as hot at its first quick refault and the
  // old hot pages must age out fast.
  uint32_t age_div = 8;                // moving: one ring slot per cap/age_div evictions
  bool sooner_replaces = true;         // moving: a refault sooner than the mean replaces the mean at once
  uint32_t still_age_div = 1;          // still: aging
  bool still_sooner_replaces = false;  // still: a sooner refault is averaged in like any other
  bool adapt = true;                   // false: the moving constants all the time
  uint32_t window_div = 16;            // a window is cap/window_div evictions
  uint32_t surprise_div = 8;           // a refault is a surprise when its distance * surprise_div < the page's mean
  uint32_t moving_permille = 200;      // the hot set moves when surprises exceed this share of a window's refaults
  uint32_t scan_mode = 2;        // sequential runs: 0 not special, 1 front of the lowest slot,
                                 // 2 pending run, then the scan list (evicted first, MRU first)
  uint32_t scan_lg = 76;         // runs: only pages whose mean refault distance >= cap / sqrt(2)
  uint32_t untimed_div = 32;     // a use seen while resident: as a refault after cap/untimed_div evictions
  uint32_t armed_div = 8;        // the armed list holds at most cap/armed_div pages
  uint32_t pending_runs = 2;     // the pending run holds at most pending_runs * (prefetch + 1) pages
};

template <class Table>
class ReplacementPolicy {
 public:
  static constexpr uint32_t kSlotBits = 7;                 // pad bits 6-0: ring slot
  static constexpr uint32_t kRingSlots = 1u << kSlotBits;
  static constexpr uint32_t kCountBits = 2, kCountMax = 3;  // pad bits 8-7: refaults in the mean
  static constexpr uint32_t kLgMax = 127;                  // pad bits 15-9: lg, 0 = hottest
  static constexpr double kLgPerOctave = 8;
  static constexpr int kLgScale = 10;                      // lg 0: mean refault distance <= cap / 2^10
  static constexpr uint16_t kPadPending = 1;               // pad bit 0 of a kFlScanList page: on the pending run
  static_assert(kSlotBits + kCountBits + 7 == 16, "lg, count and slot must fill PageMeta::pad");

  ReplacementPolicy(Table& table, bool fifo, PolicyTuning tuning = {}) : t_(table), fifo_mode_(fifo), tune_(tuning) {}
  ReplacementPolicy(const ReplacementPolicy&) = delete;
  ReplacementPolicy& operator=(const ReplacementPolicy&) = delete;

  bool fifo() const { return fifo_mode_; }

  // A page became resident (or stays so after an abandoned eviction: hot = true).
  // clock: the eviction clock now (a refaulted page's prev holds the clock when it left);
  // cap: the resident cap in pages; prefetch_max: the longest prefetch run.
  void insert(uint32_t idx, bool hot, uint32_t clock, uint32_t cap, uint32_t prefetch_max) {
    PageMeta& m = t_[idx];
    m.flags &= ~(kFlRef | kFlArmList | kFlArmed | kFlScanList);
    if (fifo_mode_) {
      fifo_.push_back(t_, idx);
      return;
    }
    bool refault = m.prev != kNil;  // prev: the eviction clock when it left
    bool follows = last_insert_ != kNil && idx == last_insert_ + 1;  // the page before it came in last
    if (refault) note_reference(m, clock - m.prev, true, cap, follows);
    else if (hot) note_reference(m, 0, false, cap);
    // A page that comes back right after its predecessor (a sequential run, mostly
    // prefetched) and is not hot is used once. A loop larger than the cap is best served
    // by keeping the pages it found resident and evicting the ones it just read, so runs
    // go on the scan list, evicted before the ring and most recently used first; the run
    // being read waits on the pending list (at most two prefetch runs, evicted last), as
    // its pages are about to be used.
    bool run = tune_.scan_mode && refault && follows && lg(m) >= tune_.scan_lg;
    last_insert_ = idx;
    if (tune_.scan_mode != 2) {
      ring_link(idx, run);
      return;
    }
    if (!run) {
      flush_pending(0);
      ring_link(idx, false);
      return;
    }
    m.pad = (uint16_t)((m.pad & ~(kRingSlots - 1)) | kPadPending);
    m.flags |= kFlScanList;
    pending_.push_back(t_, idx);
    flush_pending(tune_.pending_runs * ((size_t)prefetch_max + 1));
  }

  // A resident page leaves the policy's lists (evicted, discarded, or about to be
  // re-inserted).
  void remove(uint32_t idx) {
    PageMeta& m = t_[idx];
    if (fifo_mode_) {
      fifo_.remove(t_, idx);
    } else if (m.flags & kFlScanList) {
      (m.pad & kPadPending ? pending_ : scan_).remove(t_, idx);
    } else if (m.flags & kFlArmList) {
      armed_.remove(t_, idx);
    } else {
      ring_[m.pad & (kRingSlots - 1)].remove(t_, idx);
      ring_pages_--;
    }
    m.flags &= ~(kFlArmList | kFlScanList);
  }

  // Unlink and append up to n victims to out: the scan list first, then the lowest
  // priorities of the ring, the pending run last. A page written since it came in (a
  // write-protect trap on a clean or armed page: kFlRef) counts one more use and goes
  // back into the ring instead. A dirty page is writable, so its writes leave no trace:
  // with arm_dirty, a dirty page at the head of the ring is first "armed" (appended to
  // arm for the caller to write-protect, flagged kFlArmed and parked on the armed list,
  // at most cap/8 pages); a write meanwhile traps and marks it used, so only pages
  // nobody wrote in that round are evicted.
  void pick(size_t n, uint32_t cap, bool arm_dirty, std::vector<uint32_t>& out, std::vector<uint32_t>& arm) {
    if (fifo_mode_) {
      while (out.size() < n && fifo_.size) {
        uint32_t idx = fifo_.head;
        remove(idx);
        out.push_back(idx);
      }
      return;
    }
    cap = std::max<uint32_t>(cap, 1);
    size_t scanned = 0, scan_limit = 4 * n + 64, armed_max = std::max<uint32_t>(cap / tune_.armed_div, 1);
    size_t picked = out.size();
    while (out.size() < n && (scan_.size || ring_pages_ || armed_.size || pending_.size)) {
      uint32_t idx;
      if (scan_.size) {
        idx = scan_.head;
      } else if (armed_.size && (armed_.size > armed_max || !ring_pages_)) {
        idx = armed_.head;
      } else if (ring_pages_) {
        PageList& low = ring_[ring_low_ & (kRingSlots - 1)];
        if (!low.size) {  // every ring page is within kRingSlots of ring_low_: this ends
          ring_low_++;
          continue;
        }
        idx = low.head;
        PageMeta& m = t_[idx];
        if (arm_dirty && m.state == kResDirty && !(m.flags & (kFlArmed | kFlRef)) && scanned++ < scan_limit) {
          remove(idx);
          m.flags |= kFlArmed | kFlArmList;
          armed_.push_back(t_, idx);
          arm.push_back(idx);
          continue;
        }
      } else {
        idx = pending_.head;
      }
      PageMeta& m = t_[idx];
      if ((m.flags & kFlRef) && scanned++ < scan_limit) {
        remove(idx);
        m.flags &= ~(kFlRef | kFlArmed);
        note_reference(m, 0, false, cap);
        ring_link(idx, false);
        continue;
      }
      remove(idx);
      out.push_back(idx);
    }
    // aging: the clock new priorities start from moves one slot per cap/age_div evictions
    ring_tick_ += (uint32_t)(out.size() - picked);
    for (uint32_t step = std::max<uint32_t>(cap / age_div(), 1); ring_tick_ >= step; ring_tick_ -= step) ring_now_++;
    if (tune_.adapt) {
      win_evictions_ += (uint32_t)(out.size() - picked);
      if (win_evictions_ >= std::max<uint32_t>(cap / tune_.window_div, 1)) {
        moving_ = win_refaults_ && (uint64_t)win_surprises_ * 1000 > (uint64_t)tune_.moving_permille * win_refaults_;
        windows_++;
        moving_windows_ += moving_;
        win_evictions_ = win_refaults_ = win_surprises_ = 0;
      }
    }
  }

  // Windows of evictions so far, and those in which the hot set was found moving.
  uint64_t windows() const { return windows_; }
  uint64_t moving_windows() const { return moving_windows_; }

 private:
  bool still() const { return tune_.adapt && !moving_; }
  uint32_t age_div() const { return still() ? tune_.still_age_div : tune_.age_div; }
  // (a refault in sequence with the page before replaces the mean even while the hot set
  // holds still: a loop that fits in the cap must not look like a use-once scan for long)
  bool sooner_replaces(bool follows) const { return still() && !follows ? tune_.still_sooner_replaces : tune_.sooner_replaces; }
  static uint32_t count(const PageMeta& m) { return (m.pad >> kSlotBits) & kCountMax; }
  // a page that never refaulted is the coldest there is
  static uint32_t lg(const PageMeta& m) { return count(m) ? (uint32_t)(m.pad >> (kSlotBits + kCountBits)) : kLgMax; }

  // One more use of page m: a refault `distance` evictions after it left (timed), or a
  // use seen while it was resident (a write-protect trap, an abandoned eviction), counted
  // as a refault after cap/32 evictions. While the hot set moves (and for a page that
  // follows its predecessor in), a refault sooner than the page's mean replaces the mean
  // at once, so a page that turns hot is treated as hot at its first quick refault.
  void note_reference(PageMeta& m, uint32_t distance, bool timed, uint32_t cap, bool follows = false) {
    cap = std::max<uint32_t>(cap, 1);
    const double unit = std::ldexp((double)cap, -kLgScale);
    uint32_t k = count(m);
    double mean = k ? unit * std::exp2(lg(m) / kLgPerOctave) : 0;
    double d = std::max<double>(timed ? distance : cap / tune_.untimed_div, 1);
    if (timed && k) {  // (the evidence adapt weighs)
      win_refaults_++;
      if (d * tune_.surprise_div < mean) win_surprises_++;
    }
    double sum = (sooner_replaces(follows) && k && d < mean ? d : mean) * k + d;
    k++;
    if (k > kCountMax) {
      sum = sum * kCountMax / k;
      k = kCountMax;
    }
    double l = std::round(kLgPerOctave * std::log2(std::max(sum / k, 1.0) / unit));
    uint32_t li = (uint32_t)std::min<double>(std::max<double>(l, 0), kLgMax);
    m.pad = (uint16_t)((li << (kSlotBits + kCountBits)) | (k << kSlotBits) | (m.pad & (kRingSlots - 1)));
  }

  // Link a page into the ring at its priority (front: at the head of the lowest slot,
  // scan_mode 1's runs).
  void ring_link(uint32_t idx, bool front) {
    PageMeta& m = t_[idx];
    uint32_t h = front ? ring_low_ : ring_now_ + (kLgMax - lg(m));
    if ((int32_t)(h - ring_low_) < 0) h = ring_low_;  // (clock arithmetic: both wrap)
    if (h - ring_low_ > kRingSlots - 1) h = ring_low_ + kRingSlots - 1;
    uint32_t slot = h & (kRingSlots - 1);
    m.pad = (uint16_t)((m.pad & ~(kRingSlots - 1)) | slot);
    if (front) ring_[slot].push_front(t_, idx);
    else ring_[slot].push_back(t_, idx);
    ring_pages_++;
  }

  // The oldest pages of the pending run beyond `keep` join the scan list at its front:
  // the reader has moved past them, so they are the scan's most recently used pages.
  void flush_pending(size_t keep) {
    while (pending_.size > keep) {
      uint32_t idx = pending_.head;
      pending_.remove(t_, idx);
      t_[idx].pad &= (uint16_t)~kPadPending;
      scan_.push_front(t_, idx);
    }
  }

  Table& t_;
  const bool fifo_mode_;
  const PolicyTuning tune_;
  // Resident pages in a ring of FIFO lists indexed by priority (slot = priority mod
  // kRingSlots, all within kRingSlots of ring_low_), the armed list, the scan list and
  // the pending run; 'fifo' uses fifo_ alone.
  PageList ring_[kRingSlots], armed_, scan_, pending_, fifo_;
  uint32_t ring_low_ = 0;        // lowest priority that may hold pages: victims come from here
  uint32_t ring_now_ = 0;        // aging clock, in slots: +1 every cap/age_div evictions
  uint32_t ring_tick_ = 0;       // evictions towards the next ring_now_ step
  uint64_t ring_pages_ = 0;      // pages in the ring
  uint32_t last_insert_ = kNil;  // previous page inserted (sequential runs)
  // adapt: this window's evictions, timed refaults and surprises among them; whether
  // the last window found the hot set moving
  uint32_t win_evictions_ = 0, win_refaults_ = 0, win_surprises_ = 0;
  bool moving_ = false;
  uint64_t windows_ = 0, moving_windows_ = 0;
};

}  // namespace em
