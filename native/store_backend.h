// The two verbs (plus delete) the pager needs from a page store, reached from the
// pager's own threads. Implementations: the native memory store (no JavaScript on
// the hot path) and the batched bridge to stores written in TypeScript.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace em {

class StoreBackend {
 public:
  virtual ~StoreBackend() = default;
  // Fetch n pages into out (n * 4 KiB). found[i] = false when the store has no such page.
  // Throws em::Error (code STORE_*) when the store cannot answer.
  virtual void get(const uint64_t* keys, const uint32_t* versions, size_t n, uint8_t* out, bool* found) = 0;
  // Store n pages; returns only once the store acknowledged every one.
  virtual void put(const uint64_t* keys, const uint32_t* versions, size_t n, const uint8_t* data) = 0;
  virtual void del(const uint64_t* keys, size_t n) = 0;
  // Optional zero-copy read of one page: call `use` with the stored bytes (valid only
  // during the call). Returns false when the backend has no such path (then use get);
  // otherwise *found says whether the page existed. The embedded store implements it,
  // saving a 4 KiB copy on every single-page fault.
  virtual bool view(uint64_t /*key*/, uint32_t /*version*/, const std::function<void(const uint8_t*)>& /*use*/, bool* /*found*/) {
    return false;
  }
  // Optional hint: the page will be read soon (start loading what locates it). Never blocks.
  virtual void prefetch(uint64_t /*key*/) {}
  // The pages live in this process and die with it (the embedded store). The pager may
  // then store an evicted page after it left the guest (Pager::evict_by_splice): a
  // monitor crash in between loses nothing that the crash would not lose anyway.
  virtual bool lives_in_monitor() const { return false; }
  // Unblock any call waiting on the store (shutdown).
  virtual void cancel() {}
  virtual std::string name() const = 0;
};

}  // namespace em
