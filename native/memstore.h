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

  explicit MemStore(bool compress) : compress_(compress) {}
  ~MemStore();
  MemStore(const MemStore&) = delete;
  MemStore& operator=(const MemStore&) = delete;

  // Copy the page into out4k; false (and out4k untouched) when the page is absent.
  // Throws em::Error STORE_INTEGRITY if a compressed block fails to decompress.
  bool get(const std::string& vm, uint64_t key, void* out4k) const;
  // Store (or replace) one 4 KiB page.
  void put(const std::string& vm, uint64_t key, const void* in4k);
  // Hand page `key` to `use` without copying it out (raw pages are passed in place,
  // under the shard lock, so `use` must be short: one UFFDIO_COPY). False when absent.
  bool view(const std::string& vm, uint64_t key, const std::function<void(const uint8_t*)>& use) const;
  // Delete one page; a missing page is not an error.
  void remove(const std::string& vm, uint64_t key);
  // Keys stored for one VM (unordered).
  std::vector<uint64_t> list(const std::string& vm) const;
  // Delete every page of one VM.
  void drop_vm(const std::string& vm);
  struct Usage {
    uint64_t pages = 0;
    uint64_t bytes = 0;  // bytes held for page contents (after compression)
  };
  Usage usage(const std::string& vm) const;
  Usage usage() const;
  bool compress() const { return compress_; }

 private:
  // A stored page: one malloc'd block, header then payload. len == kPageSize means raw.
  struct Block {
    uint16_t len;
    uint8_t data[1];
  };
  struct VmPages {
    std::unordered_map<uint64_t, Block*> pages;
    uint64_t bytes = 0;
  };
  // Pages are spread over shards by key so pager threads and JS rarely contend.
  static constexpr size_t kShards = 16;
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, VmPages> vms;
  };
  static size_t shard_of(uint64_t key) {
    // Neighbouring pages go to different shards (batches spread), cheap mix.
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return static_cast<size_t>(h >> 60) % kShards;
  }
  Block* make_block(const void* in4k) const;
  const Block* find_locked(const Shard& s, const std::string& vm, uint64_t key) const;  // s.mu held
  void decompress(const Block* b, const std::string& vm, uint64_t key, void* out4k) const;

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
