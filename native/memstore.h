// The embedded page store (`memory:`): pages of many VMs kept in the monitor's heap.
// The pager calls it from its own threads with raw pointers (no JavaScript on the hot
// path); the N-API bindings (memStore*) serve kvstore/memory.ts and the tests.
#pragma once
#include <napi.h>
#include <atomic>
#include <cstdint>
#include <memory>
#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace em {

class MemStore {
 public:
  static constexpr size_t kPageSize = 4096;

  struct Usage {
    uint64_t pages = 0;
    uint64_t bytes = 0;  // bytes held for page contents (after compression)
  };
  class Vm;

  explicit MemStore(bool compress) : compress_(compress) {}
  MemStore(const MemStore&) = delete;
  MemStore& operator=(const MemStore&) = delete;

  // One VM's pages, found (or created) once: the pager keeps this handle so a fault
  // costs no name lookup. It stays valid after drop_vm (which then only empties it).
  std::shared_ptr<Vm> vm(const std::string& name);

  // The same operations by VM name (the N-API bindings and kvstore/memory.ts).
  // Copy the page into out4k; false (and out4k untouched) when the page is absent.
  // Throws em::Error STORE_INTEGRITY if a compressed block fails to decompress.
  bool get(const std::string& vm, uint64_t key, void* out4k) const;
  // Store (or replace) one 4 KiB page.
  void put(const std::string& vm, uint64_t key, const void* in4k);
  // Delete one page; a missing page is not an error.
  void remove(const std::string& vm, uint64_t key);
  // Keys stored for one VM (unordered).
  std::vector<uint64_t> list(const std::string& vm) const;
  // Delete every page of one VM.
  void drop_vm(const std::string& vm);
  Usage usage(const std::string& vm) const;
  Usage usage() const;
  bool compress() const { return compress_; }

 private:
  std::shared_ptr<Vm> find_vm(const std::string& name) const;

  const bool compress_;
  mutable std::mutex vms_mu_;  // guards the map only; each Vm locks its own shards
  std::unordered_map<std::string, std::shared_ptr<Vm>> vms_;
};

class MemStore::Vm {
 public:
  explicit Vm(bool compress) : compress_(compress) {}
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  bool get(uint64_t key, void* out4k) const;
  // Start loading the slot that locates `key` into the cache (no lock, never faults): the
  // pager issues it together with its own page-metadata load, so the two misses overlap.
  void prefetch(uint64_t key) const {
    const Shard& s = shards_[shard_index(key)];
    const Slot* slots = s.hint_slots.load(std::memory_order_relaxed);
    if (slots) __builtin_prefetch(&slots[hash(key) & s.hint_mask.load(std::memory_order_relaxed)]);
  }
  // Hand page `key` to `use` without copying it out (raw pages are passed in place,
  // under the shard lock, so `use` must be short: one UFFDIO_COPY). False when absent.
  bool view(uint64_t key, const std::function<void(const uint8_t*)>& use) const;
  void put(uint64_t key, const void* in4k);
  void remove(uint64_t key);
  void list(std::vector<uint64_t>& out) const;
  Usage usage() const;
  void clear();

 private:
  // Open addressing with linear probing: a lookup touches one slot (key, block and
  // length together) instead of a bucket, a node and the block's header, which were
  // three dependent cache misses on every fault (perf: ~1 us per lookup).
  struct Slot {
    uint64_t key;
    uint8_t* data;  // nullptr: empty slot; otherwise a malloc'd block of len bytes
    uint32_t len;   // kPageSize: raw page; less: LZ4-compressed
  };
  // Pages are spread over shards by key so the fault thread, the evictor and JS rarely
  // contend; each shard on its own cache lines.
  static constexpr size_t kShards = 16;
  struct alignas(64) Shard {
    mutable std::mutex mu;
    std::vector<Slot> slots;  // power-of-two size, at most half full
    // slots' array and mask for prefetch(), read without the lock: a stale pair only
    // prefetches a line that is no longer used (a prefetch never faults).
    std::atomic<const Slot*> hint_slots{nullptr};
    std::atomic<size_t> hint_mask{0};
    size_t count = 0;
    uint64_t bytes = 0;
  };
  // A full 64-bit mix (keys are region << 32 | page: the region must reach the low
  // bits too). The top 4 bits pick the shard, the low bits the slot.
  static uint64_t hash(uint64_t key) {
    key ^= key >> 33; key *= 0xff51afd7ed558ccdull; key ^= key >> 33; key *= 0xc4ceb9fe1a85ec53ull;
    return key ^ (key >> 33);
  }
  static size_t shard_index(uint64_t key) { return static_cast<size_t>(hash(key) >> 60); }
  static size_t home(const Shard& s, uint64_t key) { return static_cast<size_t>(hash(key)) & (s.slots.size() - 1); }
  static const Slot* find_locked(const Shard& s, uint64_t key);  // s.mu held
  static void grow_locked(Shard& s);
  static void erase_at_locked(Shard& s, size_t i);
  uint8_t* make_block(const void* in4k, uint32_t* len) const;
  void decompress(const Slot& b, uint64_t key, void* out4k) const;

  const bool compress_;
  Shard shards_[kShards];
};

// The MemStore behind a handle returned by memStoreCreate; throws em::Error EM_BAD_ARG
// when the value is not such a handle. The caller keeps its own reference.
std::shared_ptr<MemStore> MemStoreFromValue(Napi::Value v);

// CRC-32C (Castagnoli; SSE4.2 when the CPU has it). `seed` is a previous result to chain.
uint32_t Crc32c(const void* data, size_t len, uint32_t seed = 0);

void RegisterMemStore(Napi::Env env, Napi::Object exports);

}  // namespace em
