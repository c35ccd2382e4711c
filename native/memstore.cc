// The embedded page store. Each VM's pages live in 16 sharded open-addressing tables
// of (key, block, length) slots; each page is one malloc'd block holding just the
// payload: about 4.1 KiB per raw page plus a 24-byte slot at most half-full. With
// compression on, pages are LZ4-compressed and kept raw whenever LZ4 does not shrink
// them (so a page never costs more than raw).
#include "memstore.h"

#include <lz4.h>

#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>

#include "napi_util.h"

namespace em {

// ------------------------------------------------------------------ one VM's pages

MemStore::Vm::~Vm() {
  for (auto& s : shards_)
    for (auto& slot : s.slots) std::free(slot.data);
}

uint8_t* MemStore::Vm::make_block(const void* in4k, uint32_t* len) const {
  char tmp[kPageSize];
  int clen = 0;
  // Ask LZ4 for strictly less than a page: 0 means "does not shrink", store raw.
  if (compress_) clen = LZ4_compress_default(static_cast<const char*>(in4k), tmp, kPageSize, kPageSize - 1);
  const bool raw = clen <= 0;
  *len = raw ? kPageSize : static_cast<uint32_t>(clen);
  auto* b = static_cast<uint8_t*>(std::malloc(*len));
  if (!b) throw std::bad_alloc();
  std::memcpy(b, raw ? in4k : tmp, *len);
  return b;
}

const MemStore::Vm::Slot* MemStore::Vm::find_locked(const Shard& s, uint64_t key) {
  if (s.slots.empty()) return nullptr;
  const size_t mask = s.slots.size() - 1;
  for (size_t i = home(s, key);; i = (i + 1) & mask) {
    const Slot& slot = s.slots[i];
    if (!slot.data) return nullptr;  // at most half full: an empty slot always ends the probe
    if (slot.key == key) return &slot;
  }
}

void MemStore::Vm::grow_locked(Shard& s) {
  std::vector<Slot> old(s.slots.empty() ? 64 : s.slots.size() * 2, Slot{0, nullptr, 0});
  old.swap(s.slots);
  const size_t mask = s.slots.size() - 1;
  for (const Slot& slot : old) {
    if (!slot.data) continue;
    size_t i = home(s, slot.key);
    while (s.slots[i].data) i = (i + 1) & mask;
    s.slots[i] = slot;
  }
  s.hint_mask.store(mask, std::memory_order_relaxed);
  s.hint_slots.store(s.slots.data(), std::memory_order_relaxed);
}

// Backward-shift deletion: pull later members of the probe run into the hole, so no
// tombstones build up and lookups stay one short probe.
void MemStore::Vm::erase_at_locked(Shard& s, size_t i) {
  const size_t mask = s.slots.size() - 1;
  for (size_t j = (i + 1) & mask; s.slots[j].data; j = (j + 1) & mask) {
    const size_t k = home(s, s.slots[j].key);
    // The entry at j may move to i unless its home lies cyclically in (i, j].
    const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (stays) continue;
    s.slots[i] = s.slots[j];
    i = j;
  }
  s.slots[i] = Slot{0, nullptr, 0};
}

void MemStore::Vm::decompress(const Slot& b, uint64_t key, void* out4k) const {
  int n = LZ4_decompress_safe(reinterpret_cast<const char*>(b.data), static_cast<char*>(out4k), static_cast<int>(b.len), kPageSize);
  if (n != static_cast<int>(kPageSize))
    throw Error("STORE_INTEGRITY", "memory store: page " + std::to_string(key) + " failed to decompress (corrupted block)");
}

bool MemStore::Vm::get(uint64_t key, void* out4k) const {
  const Shard& s = shards_[shard_index(key)];
  std::lock_guard<std::mutex> lk(s.mu);
  const Slot* b = find_locked(s, key);
  if (!b) return false;
  if (b->len == kPageSize) std::memcpy(out4k, b->data, kPageSize);
  else decompress(*b, key, out4k);
  return true;
}

bool MemStore::Vm::view(uint64_t key, const std::function<void(const uint8_t*)>& use) const {
  const Shard& s = shards_[shard_index(key)];
  std::lock_guard<std::mutex> lk(s.mu);
  const Slot* b = find_locked(s, key);
  if (!b) return false;
  if (b->len == kPageSize) {
    use(b->data);
    return true;
  }
  alignas(64) uint8_t tmp[kPageSize];
  decompress(*b, key, tmp);
  use(tmp);
  return true;
}

void MemStore::Vm::put(uint64_t key, const void* in4k) {
  uint32_t len = 0;
  uint8_t* nb = make_block(in4k, &len);  // compress outside the lock
  Shard& s = shards_[shard_index(key)];
  uint8_t* old = nullptr;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    if (Slot* b = const_cast<Slot*>(find_locked(s, key))) {
      old = b->data;
      s.bytes -= b->len;
      b->data = nb;
      b->len = len;
    } else {
      try {
        if ((s.count + 1) * 2 > s.slots.size()) grow_locked(s);
      } catch (...) {
        std::free(nb);
        throw;
      }
      const size_t mask = s.slots.size() - 1;
      size_t i = home(s, key);
      while (s.slots[i].data) i = (i + 1) & mask;
      s.slots[i] = Slot{key, nb, len};
      s.count++;
    }
    s.bytes += len;
  }
  std::free(old);
}

void MemStore::Vm::remove(uint64_t key) {
  Shard& s = shards_[shard_index(key)];
  uint8_t* old = nullptr;
  {
    std::lock_guard<std::mutex> lk(s.mu);
    const Slot* b = find_locked(s, key);
    if (!b) return;
    old = b->data;
    s.bytes -= b->len;
    s.count--;
    erase_at_locked(s, static_cast<size_t>(b - s.slots.data()));
  }
  std::free(old);
}

void MemStore::Vm::list(std::vector<uint64_t>& out) const {
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lk(s.mu);
    out.reserve(out.size() + s.count);
    for (const Slot& slot : s.slots)
      if (slot.data) out.push_back(slot.key);
  }
}

MemStore::Usage MemStore::Vm::usage() const {
  Usage u;
  for (const auto& s : shards_) {
    std::lock_guard<std::mutex> lk(s.mu);
    u.pages += s.count;
    u.bytes += s.bytes;
  }
  return u;
}

void MemStore::Vm::clear() {
  for (auto& s : shards_) {
    std::vector<Slot> gone;
    {
      std::lock_guard<std::mutex> lk(s.mu);
      s.hint_slots.store(nullptr, std::memory_order_relaxed);
      gone.swap(s.slots);
      s.count = 0;
      s.bytes = 0;
    }
    for (const Slot& slot : gone) std::free(slot.data);  // free outside the lock
  }
}

// ------------------------------------------------------------------ VMs by name

std::shared_ptr<MemStore::Vm> MemStore::vm(const std::string& name) {
  std::lock_guard<std::mutex> lk(vms_mu_);
  auto& v = vms_[name];
  if (!v) v = std::make_shared<Vm>(compress_);
  return v;
}

std::shared_ptr<MemStore::Vm> MemStore::find_vm(const std::string& name) const {
  std::lock_guard<std::mutex> lk(vms_mu_);
  auto it = vms_.find(name);
  return it == vms_.end() ? nullptr : it->second;
}

bool MemStore::get(const std::string& vm, uint64_t key, void* out4k) const {
  auto v = find_vm(vm);
  return v && v->get(key, out4k);
}

void MemStore::put(const std::string& name, uint64_t key, const void* in4k) { vm(name)->put(key, in4k); }

void MemStore::remove(const std::string& vm, uint64_t key) {
  if (auto v = find_vm(vm)) v->remove(key);
}

std::vector<uint64_t> MemStore::list(const std::string& vm) const {
  std::vector<uint64_t> out;
  if (auto v = find_vm(vm)) v->list(out);
  return out;
}

void MemStore::drop_vm(const std::string& name) {
  std::shared_ptr<Vm> v;
  {
    std::lock_guard<std::mutex> lk(vms_mu_);
    auto it = vms_.find(name);
    if (it == vms_.end()) return;
    v = it->second;
    // A pager holding the handle keeps using this Vm: leave it findable (empty), so
    // its later puts stay visible by name as they were before the drop.
    if (v.use_count() == 2) vms_.erase(it);
  }
  v->clear();
}

MemStore::Usage MemStore::usage(const std::string& vm) const {
  auto v = find_vm(vm);
  return v ? v->usage() : Usage{};
}

MemStore::Usage MemStore::usage() const {
  std::vector<std::shared_ptr<Vm>> all;
  {
    std::lock_guard<std::mutex> lk(vms_mu_);
    for (const auto& kv : vms_) all.push_back(kv.second);
  }
  Usage u;
  for (const auto& v : all) {
    Usage one = v->usage();
    u.pages += one.pages;
    u.bytes += one.bytes;
  }
  return u;
}

// ---------------------------------------------------------------------------------
// CRC-32C (Castagnoli) for the page envelope of the TypeScript stores (kvstore/envelope.ts).
// zlib.crc32 in Node 20 runs at about 1.5 GB/s here (2.8 us per 4 KiB page), more than
// Redis needs to store the page; the SSE4.2 crc32 instruction does a page in well under
// 1 us. kvstore/crc32c.ts has the identical table-driven version for when the addon is
// missing. Standard polynomial 0x82F63B78, initial ~0, final ~0; `seed` chains calls.

namespace {

uint32_t g_crc_table[8][256];

void InitCrcTable() {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    g_crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) g_crc_table[t][i] = (g_crc_table[t - 1][i] >> 8) ^ g_crc_table[0][g_crc_table[t - 1][i] & 0xff];
}

uint32_t Crc32cSoft(uint32_t crc, const uint8_t* p, size_t n) {
  while (n--) crc = (crc >> 8) ^ g_crc_table[0][(crc ^ *p++) & 0xff];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cHw(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

}  // namespace

uint32_t Crc32c(const void* data, size_t len, uint32_t seed) {
  static const bool hw = [] {
    InitCrcTable();
#if defined(__x86_64__)
    return __builtin_cpu_supports("sse4.2") != 0;
#else
    return false;
#endif
  }();
  uint32_t crc = ~seed;
#if defined(__x86_64__)
  if (hw) return ~Crc32cHw(crc, static_cast<const uint8_t*>(data), len);
#endif
  return ~Crc32cSoft(crc, static_cast<const uint8_t*>(data), len);
}

// ---------------------------------------------------------------------------------
// N-API bindings. A handle is an External holding a heap shared_ptr<MemStore>, type
// tagged so a pager handle (or any other External) is rejected instead of misread.

namespace {

const napi_type_tag kMemStoreTag = {0x656c61737469636dull, 0x6d656d73746f7265ull};  // "elasticm" "memstore"

using Holder = std::shared_ptr<MemStore>;

// Page keys arrive as JS numbers: integers in [0, 2^53].
uint64_t KeyOf(const Napi::Value& v, uint32_t i) {
  if (!v.IsNumber()) throw Error("EM_BAD_ARG", "page key #" + std::to_string(i) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740992.0 || std::floor(d) != d)
    throw Error("EM_BAD_ARG", "page key #" + std::to_string(i) + " must be an integer in [0, 2^53], got " +
                                  v.ToString().Utf8Value());
  return static_cast<uint64_t>(d);
}

Napi::Array ArgArray(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsArray())
    throw Error("EM_BAD_ARG", std::string("argument '") + name + "' must be an array");
  return info[i].As<Napi::Array>();
}

Napi::Value Create(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    bool compress = false;
    if (info.Length() > 0 && info[0].IsObject()) {
      Napi::Value c = info[0].As<Napi::Object>().Get("compress");
      compress = c.IsBoolean() && c.As<Napi::Boolean>().Value();
    }
    auto* holder = new Holder(std::make_shared<MemStore>(compress));
    auto ext = Napi::External<Holder>::New(info.Env(), holder, [](Napi::Env, Holder* h) { delete h; });
    ext.TypeTag(&kMemStoreTag);
    return ext;
  });
}

Napi::Value Put(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto store = MemStoreFromValue(info[0]);
    std::string vm = ArgString(info, 1, "vm");
    Napi::Array keys = ArgArray(info, 2, "pages");
    Napi::Array data = ArgArray(info, 3, "data");
    if (keys.Length() != data.Length())
      throw Error("EM_BAD_ARG", "pages and data differ in length (" + std::to_string(keys.Length()) + " vs " +
                                    std::to_string(data.Length()) + ")");
    // Validate everything first: a bad argument changes nothing.
    std::vector<uint64_t> ks(keys.Length());
    std::vector<const uint8_t*> ptrs(keys.Length());
    for (uint32_t i = 0; i < keys.Length(); i++) {
      ks[i] = KeyOf(keys.Get(i), i);
      Napi::Value d = data.Get(i);
      if (!d.IsBuffer() || d.As<Napi::Buffer<uint8_t>>().Length() != MemStore::kPageSize)
        throw Error("EM_BAD_ARG", "data #" + std::to_string(i) + " must be a Buffer of exactly 4096 bytes");
      ptrs[i] = d.As<Napi::Buffer<uint8_t>>().Data();
    }
    for (size_t i = 0; i < ks.size(); i++) store->put(vm, ks[i], ptrs[i]);
    return info.Env().Undefined();
  });
}

Napi::Value Get(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    auto store = MemStoreFromValue(info[0]);
    std::string vm = ArgString(info, 1, "vm");
    Napi::Array keys = ArgArray(info, 2, "pages");
    std::vector<uint64_t> ks(keys.Length());
    for (uint32_t i = 0; i < keys.Length(); i++) ks[i] = KeyOf(keys.Get(i), i);
    Napi::Array out = Napi::Array::New(env, ks.size());
    for (uint32_t i = 0; i < ks.size(); i++) {
      auto buf = Napi::Buffer<uint8_t>::New(env, MemStore::kPageSize);
      if (store->get(vm, ks[i], buf.Data())) out.Set(i, buf);
      else out.Set(i, env.Null());
    }
    return out;
  });
}

Napi::Value Delete(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto store = MemStoreFromValue(info[0]);
    std::string vm = ArgString(info, 1, "vm");
    Napi::Array keys = ArgArray(info, 2, "pages");
    std::vector<uint64_t> ks(keys.Length());
    for (uint32_t i = 0; i < keys.Length(); i++) ks[i] = KeyOf(keys.Get(i), i);
    for (uint64_t k : ks) store->remove(vm, k);
    return info.Env().Undefined();
  });
}

Napi::Value DropVm(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto store = MemStoreFromValue(info[0]);
    store->drop_vm(ArgString(info, 1, "vm"));
    return info.Env().Undefined();
  });
}

Napi::Value List(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    auto store = MemStoreFromValue(info[0]);
    std::vector<uint64_t> ks = store->list(ArgString(info, 1, "vm"));
    Napi::Array out = Napi::Array::New(env, ks.size());
    for (uint32_t i = 0; i < ks.size(); i++) out.Set(i, Napi::Number::New(env, static_cast<double>(ks[i])));
    return out;
  });
}

Napi::Value UsageOf(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    auto store = MemStoreFromValue(info[0]);
    MemStore::Usage u;
    if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull()) u = store->usage(ArgString(info, 1, "vm"));
    else u = store->usage();
    Napi::Object o = Napi::Object::New(env);
    o.Set("pages", Napi::Number::New(env, static_cast<double>(u.pages)));
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(u.bytes)));
    return o;
  });
}

// crc32c(buf, seed = 0) -> uint32
Napi::Value Crc32cJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsBuffer()) throw Error("EM_BAD_ARG", "argument 'data' must be a Buffer");
    auto b = info[0].As<Napi::Buffer<uint8_t>>();
    uint32_t seed = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
    return Napi::Number::New(info.Env(), Crc32c(b.Data(), b.Length(), seed));
  });
}

// envelopeCrc(value, vmCrc, pageHi, pageLo) -> uint32: the check of a plain page envelope
// (kvstore/envelope.ts) in one call: CRC-32C over the page key (8 bytes, big endian),
// then value[0..12) (the header), then value[16..) (the payload), chained from vmCrc.
Napi::Value EnvelopeCrcJs(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    if (info.Length() < 4 || !info[0].IsBuffer()) throw Error("EM_BAD_ARG", "envelopeCrc(value, vmCrc, pageHi, pageLo)");
    auto b = info[0].As<Napi::Buffer<uint8_t>>();
    if (b.Length() < 16) throw Error("EM_BAD_ARG", "envelope shorter than its header");
    uint32_t crc = info[1].As<Napi::Number>().Uint32Value();
    uint32_t hi = info[2].As<Napi::Number>().Uint32Value();
    uint32_t lo = info[3].As<Napi::Number>().Uint32Value();
    uint8_t key[8] = {uint8_t(hi >> 24), uint8_t(hi >> 16), uint8_t(hi >> 8), uint8_t(hi),
                      uint8_t(lo >> 24), uint8_t(lo >> 16), uint8_t(lo >> 8), uint8_t(lo)};
    crc = Crc32c(key, 8, crc);
    crc = Crc32c(b.Data(), 12, crc);
    crc = Crc32c(b.Data() + 16, b.Length() - 16, crc);
    return Napi::Number::New(info.Env(), crc);
  });
}

}  // namespace

std::shared_ptr<MemStore> MemStoreFromValue(Napi::Value v) {
  if (v.IsEmpty() || !v.IsExternal() || !v.As<Napi::External<Holder>>().CheckTypeTag(&kMemStoreTag))
    throw Error("EM_BAD_ARG", "not a memory store handle (expected the value returned by memStoreCreate)");
  return *v.As<Napi::External<Holder>>().Data();
}

void RegisterMemStore(Napi::Env env, Napi::Object exports) {
  exports.Set("memStoreCreate", Napi::Function::New(env, Create));
  exports.Set("memStorePut", Napi::Function::New(env, Put));
  exports.Set("memStoreGet", Napi::Function::New(env, Get));
  exports.Set("memStoreDelete", Napi::Function::New(env, Delete));
  exports.Set("memStoreDropVm", Napi::Function::New(env, DropVm));
  exports.Set("memStoreList", Napi::Function::New(env, List));
  exports.Set("memStoreUsage", Napi::Function::New(env, UsageOf));
  exports.Set("crc32c", Napi::Function::New(env, Crc32cJs));
  exports.Set("envelopeCrc", Napi::Function::New(env, EnvelopeCrcJs));
}

}  // namespace em
