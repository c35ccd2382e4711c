// Per-page metadata of one attached target (16 bytes a page: 4 MiB per GiB of guest
// RAM, the bound DESIGN.md sets) and the intrusive lists of the replacement policy.
#pragma once
#include <sys/mman.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <new>
#include <vector>

namespace em {

enum PageState : uint8_t {
  kAbsent = 0,   // never written, or discarded by QEMU: reads as zeros, nothing stored
  kResDirty,     // resident and writable; any stored copy is stale
  kResClean,     // resident, write-protected, the store holds this exact content
  kEvicting,     // write-protected, being copied out / dropped by the evictor
  kRemote,       // not resident; the store holds the newest content
};

enum PageFlag : uint8_t {
  kFlRef = 1,        // written since it entered its list (write-protect trap): second chance
  kFlAbort = 2,      // written or discarded while being evicted: the eviction of this page is abandoned
  kFlDropping = 4,   // eviction committed: the drop (punch / DONTNEED) is under way
  kFlStoreCopy = 8,  // the store holds some copy (maybe stale): delete it if the page becomes zero
  kFlLost = 16,      // the store lost this page: its faults are never resolved (VM waits), reported loudly
  kFlArmList = 32,   // on the replacement policy's armed list (not in its priority ring)
  kFlArmed = 64,     // dirty page write-protected only to see whether it is written again (reference bit)
  kFlScanList = 128, // on the replacement policy's scan list or pending run (pad bit 0: pending)
};

constexpr uint32_t kNil = UINT32_MAX;

struct PageMeta {
  // Resident pages: links of their list. Non-resident pages: prev = eviction clock at eviction
  // (refault distance = clock now - prev tells whether the page was hot).
  uint32_t prev = kNil;
  uint32_t next = kNil;
  uint32_t version = 0;  // version of the stored copy (0 = unknown, accepted on fetch)
  uint8_t state = kAbsent;
  uint8_t flags = 0;
  // Replacement policy state (ReplacementPolicy::note_reference, replacement.h), kept while the page is remote:
  // bits 15-9 log2 of its mean refault distance, bits 8-7 how many refaults that mean
  // covers; while resident, bits 6-0 its slot in the priority ring.
  uint16_t pad = 0;
};
static_assert(sizeof(PageMeta) == 16, "page metadata must stay at 16 bytes a page");

// The page table of one target, one PageMeta per page. It lives in one reservation of
// address space for the largest table (kNil pages, 64 GiB of address space, no memory)
// and is made accessible page by page as it grows, so entries never move: the fault
// and eviction threads go on using it while hot-added RAM extends it
// (Pager::add_regions). Only grow() writes size; readers see whole entries.
class PageTable {
 public:
  PageTable() = default;
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;
  ~PageTable() {
    if (base_) munmap(base_, kReserve);
  }
  // Append n default entries. false (errno set) when the address space or memory is not there.
  // nullptr when it grew; else the call that failed, errno set ("page count" with E2BIG:
  // more pages than the table's 32-bit indices reach).
  const char* grow(uint32_t n) {
    uint64_t want = (uint64_t)size() + n;
    if (want >= kNil) { errno = E2BIG; return "page count"; }
    if (!base_) {
      void* p = mmap(nullptr, kReserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) return "mmap";
      base_ = static_cast<PageMeta*>(p);
    }
    size_t need = (size_t)((want * sizeof(PageMeta) + 4095) & ~(uint64_t)4095);
    if (need > open_) {
      if (mprotect(reinterpret_cast<char*>(base_) + open_, need - open_, PROT_READ | PROT_WRITE) != 0) return "mprotect";
      open_ = need;
    }
    for (uint64_t i = size(); i < want; i++) new (&base_[i]) PageMeta();
    size_.store((uint32_t)want, std::memory_order_release);
    return nullptr;
  }
  uint32_t size() const { return size_.load(std::memory_order_acquire); }
  size_t bytes() const { return open_; }  // memory the table may occupy (what it made accessible)
  PageMeta& operator[](uint32_t i) { return base_[i]; }
  const PageMeta& operator[](uint32_t i) const { return base_[i]; }

 private:
  static constexpr size_t kReserve = (size_t)kNil * sizeof(PageMeta);
  PageMeta* base_ = nullptr;
  size_t open_ = 0;
  std::atomic<uint32_t> size_{0};
};

// An intrusive doubly linked list over PageMeta indexes (a FIFO, unless pushed at the
// front), over a PageTable or (in backend/bench/policy-sim.cc) a vector of PageMeta.
struct PageList {
  uint32_t head = kNil, tail = kNil, size = 0;

  template <class Table>
  void push_front(Table& t, uint32_t i) {
    t[i].prev = kNil;
    t[i].next = head;
    if (head != kNil) t[head].prev = i; else tail = i;
    head = i;
    size++;
  }
  template <class Table>
  void push_back(Table& t, uint32_t i) {
    t[i].prev = tail;
    t[i].next = kNil;
    if (tail != kNil) t[tail].next = i; else head = i;
    tail = i;
    size++;
  }
  template <class Table>
  void remove(Table& t, uint32_t i) {
    PageMeta& m = t[i];
    if (m.prev != kNil) t[m.prev].next = m.next; else head = m.next;
    if (m.next != kNil) t[m.next].prev = m.prev; else tail = m.prev;
    m.prev = m.next = kNil;
    size--;
  }
};

}  // namespace em
