// Per-page metadata of one attached target (16 bytes a page: 4 MiB per GiB of guest
// RAM, the bound DESIGN.md sets) and the intrusive lists of the replacement policy.
#pragma once
#include <cstdint>
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
  // Replacement policy state (Pager::note_reference), kept while the page is remote:
  // bits 15-9 log2 of its mean refault distance, bits 8-7 how many refaults that mean
  // covers; while resident, bits 6-0 its slot in the priority ring.
  uint16_t pad = 0;
};
static_assert(sizeof(PageMeta) == 16, "page metadata must stay at 16 bytes a page");

// An intrusive doubly linked list over PageMeta indexes (a FIFO, unless pushed at the front).
struct PageList {
  uint32_t head = kNil, tail = kNil, size = 0;

  void push_front(std::vector<PageMeta>& t, uint32_t i) {
    t[i].prev = kNil;
    t[i].next = head;
    if (head != kNil) t[head].prev = i; else tail = i;
    head = i;
    size++;
  }
  void push_back(std::vector<PageMeta>& t, uint32_t i) {
    t[i].prev = tail;
    t[i].next = kNil;
    if (tail != kNil) t[tail].next = i; else head = i;
    tail = i;
    size++;
  }
  void remove(std::vector<PageMeta>& t, uint32_t i) {
    PageMeta& m = t[i];
    if (m.prev != kNil) t[m.prev].next = m.next; else head = m.next;
    if (m.next != kNil) t[m.next].prev = m.prev; else tail = m.prev;
    m.prev = m.next = kNil;
    size--;
  }
};

}  // namespace em
