// N-API face of the pager: pagerStart/Stats/SetCap/AddRegions/Detach/Abandon/Complete, the
// store backends (native memory store, batched bridge to TypeScript stores) and the
// thread-safe channels that carry events and requests to JavaScript.
#include <napi.h>

#include <fcntl.h>
#include <sched.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "memstore.h"
#include "napi_util.h"
#include "pager.h"
#include "uffd.h"
#include "wake_signal.h"

namespace em {

namespace {

// A ThreadSafeFunction that native threads may call after JS released it: calls
// then become no-ops instead of use-after-free.
class Channel {
 public:
  Channel(Napi::Env env, Napi::Function fn, const char* name) {
    // Bounded: while JavaScript is stalled, a failure repeating on a native thread must
    // not queue without limit. A full queue drops the call (post frees it): an event is
    // lost, a bridge request times out and is retried.
    tsfn_ = Napi::ThreadSafeFunction::New(env, fn, name, kMaxQueued, 1);
    alive_ = true;
  }
  template <class T, class F>
  void post(T* data, F&& cb) {
    std::lock_guard<std::mutex> g(mu_);
    if (!alive_ || tsfn_.NonBlockingCall(data, cb) != napi_ok) delete data;
  }
  void release() {
    std::lock_guard<std::mutex> g(mu_);
    if (!alive_) return;
    alive_ = false;
    tsfn_.Release();
  }
  ~Channel() { release(); }

 private:
  static constexpr size_t kMaxQueued = 4096;
  std::mutex mu_;
  bool alive_ = false;
  Napi::ThreadSafeFunction tsfn_;
};

class MemBackend : public StoreBackend {
 public:
  // The VM's table is resolved once here: the fault path does no name lookup.
  MemBackend(std::shared_ptr<MemStore> s, const std::string& vm) : s_(std::move(s)), vm_(s_->vm(vm)) {}
  void get(const uint64_t* keys, const uint32_t*, size_t n, uint8_t* out, bool* found) override {
    for (size_t i = 0; i < n; i++) found[i] = vm_->get(keys[i], out + i * kPageSize);
  }
  void put(const uint64_t* keys, const uint32_t*, size_t n, const uint8_t* data) override {
    try {
      for (size_t i = 0; i < n; i++) vm_->put(keys[i], data + i * kPageSize);
    } catch (const std::bad_alloc&) {  // an em::Error, so the pager backs off and retries
      throw Error("STORE_FULL", "memory store: no memory left for more pages", ENOMEM);
    }
  }
  void del(const uint64_t* keys, size_t n) override {
    for (size_t i = 0; i < n; i++) vm_->remove(keys[i]);
  }
  bool view(uint64_t key, uint32_t, const std::function<void(const uint8_t*)>& use, bool* found) override {
    *found = vm_->view(key, use);
    return true;
  }
  void prefetch(uint64_t key) override { vm_->prefetch(key); }
  bool lives_in_monitor() const override { return true; }
  std::string name() const override { return "memory:"; }

 private:
  std::shared_ptr<MemStore> s_;  // keeps the store alive while the pager runs
  std::shared_ptr<MemStore::Vm> vm_;
};

struct BridgeRequest {
  uint32_t id;
  const char* op;
  std::vector<uint64_t> keys;
  std::vector<uint32_t> versions;
  std::vector<uint8_t> data;
};

// Stores written in TypeScript: one thread-safe-function call per batch, never per page.
// The pager thread waits for pagerComplete(id, ...) from JavaScript.
class BridgeBackend : public StoreBackend {
 public:
  explicit BridgeBackend(std::shared_ptr<Channel> ch) : ch_(std::move(ch)) {}

  void get(const uint64_t* keys, const uint32_t* vers, size_t n, uint8_t* out, bool* found) override {
    auto p = call("get", keys, vers, n, nullptr);
    if (p->data.size() != n * kPageSize || p->found.size() != n)
      throw Error("STORE_PROTOCOL", "store bridge returned a malformed get reply");
    memcpy(out, p->data.data(), n * kPageSize);
    for (size_t i = 0; i < n; i++) found[i] = p->found[i];
  }
  void put(const uint64_t* keys, const uint32_t* vers, size_t n, const uint8_t* data) override {
    call("put", keys, vers, n, data);
  }
  void del(const uint64_t* keys, size_t n) override {
    std::vector<uint32_t> vers(n, 0);
    call("delete", keys, vers.data(), n, nullptr);
  }
  void cancel() override {
    std::lock_guard<std::mutex> g(mu_);
    cancelled_ = true;
    for (auto& kv : pending_) {
      std::lock_guard<std::mutex> pg(kv.second->mu);
      if (kv.second->done) continue;  // answered: its caller reads it now
      kv.second->done = true;
      kv.second->err = "STORE_CANCELLED: the pager is stopping";
      kv.second->cv.notify_all();
    }
  }
  std::string name() const override { return "bridge"; }

  // From JavaScript (pagerComplete).
  void complete(uint32_t id, const std::string& err, const Napi::Array* data) {
    std::shared_ptr<Pending> p;
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;  // timed out earlier; the retry owns a new id
      p = it->second;
    }
    std::lock_guard<std::mutex> pg(p->mu);
    if (p->done) return;  // (answered twice, or cancelled meanwhile: the first word stands)
    if (!err.empty()) {
      p->err = err;
    } else if (data) {
      size_t n = data->Length();
      p->data.assign(n * kPageSize, 0);
      p->found.assign(n, 0);
      for (size_t i = 0; i < n; i++) {
        Napi::Value v = (*data)[i];
        if (v.IsBuffer()) {
          auto b = v.As<Napi::Buffer<uint8_t>>();
          if (b.Length() != kPageSize) {
            p->err = "STORE_PROTOCOL: store returned a page of " + std::to_string(b.Length()) + " bytes";
            break;
          }
          memcpy(p->data.data() + i * kPageSize, b.Data(), kPageSize);
          p->found[i] = 1;
        }
      }
    }
    p->done = true;
    p->cv.notify_all();
  }

 private:
  struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::string err;
    std::vector<uint8_t> data;
    std::vector<uint8_t> found;
  };
  static constexpr int kTimeoutSec = 30;

  std::shared_ptr<Pending> call(const char* op, const uint64_t* keys, const uint32_t* vers, size_t n, const uint8_t* data) {
    auto p = std::make_shared<Pending>();
    auto* req = new BridgeRequest{0, op, std::vector<uint64_t>(keys, keys + n), std::vector<uint32_t>(vers, vers + n), {}};
    if (data) req->data.assign(data, data + n * kPageSize);
    {
      std::lock_guard<std::mutex> g(mu_);
      if (cancelled_) {
        delete req;
        throw Error("STORE_CANCELLED", "the pager is stopping");
      }
      req->id = next_id_++;
      pending_[req->id] = p;
    }
    uint32_t id = req->id;
    ch_->post(req, [](Napi::Env env, Napi::Function fn, BridgeRequest* r) {
      std::unique_ptr<BridgeRequest> own(r);
      Napi::Object o = Napi::Object::New(env);
      o.Set("id", r->id);
      o.Set("op", r->op);
      Napi::Array pages = Napi::Array::New(env, r->keys.size());
      Napi::Array versions = Napi::Array::New(env, r->keys.size());
      for (size_t i = 0; i < r->keys.size(); i++) {
        pages[i] = Napi::Number::New(env, (double)r->keys[i]);
        versions[i] = Napi::Number::New(env, r->versions[i]);
      }
      o.Set("pages", pages);
      o.Set("versions", versions);
      if (!r->data.empty()) {
        // one copy for the batch; per-page Buffers are views into it
        auto big = Napi::Buffer<uint8_t>::Copy(env, r->data.data(), r->data.size());
        Napi::Function sub = big.Get("subarray").As<Napi::Function>();
        Napi::Array arr = Napi::Array::New(env, r->keys.size());
        for (size_t i = 0; i < r->keys.size(); i++)
          arr[i] = sub.Call(big, {Napi::Number::New(env, (double)(i * kPageSize)), Napi::Number::New(env, (double)((i + 1) * kPageSize))});
        o.Set("data", arr);
      }
      fn.Call({o});
    });
    bool ok;
    {
      std::unique_lock<std::mutex> lk(p->mu);
      ok = p->cv.wait_for(lk, std::chrono::seconds(kTimeoutSec), [&] { return p->done; });
    }  // (p->mu released before mu_ is taken: cancel() takes mu_, then each p->mu)
    {
      std::lock_guard<std::mutex> g(mu_);
      pending_.erase(id);
    }
    // Done: complete() and cancel() write a Pending only while it is not done, so what
    // is read of it below (and by get()) no longer changes.
    if (!ok) throw Error("STORE_TIMEOUT", std::string("the store did not answer a ") + op + " of " + std::to_string(n) + " pages within 30 s");
    if (!p->err.empty()) {
      std::string code = p->err.substr(0, p->err.find(':'));
      if (code.empty() || code.find(' ') != std::string::npos) code = "STORE_ERROR";
      throw Error(code, p->err);
    }
    return p;
  }

  std::shared_ptr<Channel> ch_;
  std::mutex mu_;
  bool cancelled_ = false;
  uint32_t next_id_ = 1;
  std::unordered_map<uint32_t, std::shared_ptr<Pending>> pending_;
};

struct PagerHandle {
  std::shared_ptr<Pager> pager;
  BridgeBackend* bridge = nullptr;  // owned by pager
  std::shared_ptr<Channel> events, requests;
  std::thread detach_thread;
  ~PagerHandle() {
    if (detach_thread.joinable()) detach_thread.join();
  }
};

PagerHandle* HandleOf(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw Error("EM_BAD_ARG", "expected a pager handle");
  auto* h = info[0].As<Napi::External<PagerHandle>>().Data();
  if (!h->pager) throw Error("EM_DETACHED", "this pager was already detached or abandoned");
  return h;
}

uint64_t ParseAddress(Napi::Value v, const char* what) {
  if (v.IsNumber()) return (uint64_t)v.As<Napi::Number>().Int64Value();
  if (!v.IsString()) throw Error("EM_BAD_ARG", std::string(what) + " must be a string address");
  std::string s = v.As<Napi::String>().Utf8Value();
  char* end = nullptr;
  errno = 0;
  unsigned long long x = strtoull(s.c_str(), &end, 0);
  if (errno || !end || *end) throw Error("EM_BAD_ARG", std::string(what) + " '" + s + "' is not an address");
  return x;
}

uint64_t Num(Napi::Object o, const char* key, uint64_t dflt, bool required = false) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    if (required) throw Error("EM_BAD_ARG", std::string("option '") + key + "' is required");
    return dflt;
  }
  if (!v.IsNumber()) throw Error("EM_BAD_ARG", std::string("option '") + key + "' must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d < 0) throw Error("EM_BAD_ARG", std::string("option '") + key + "' must not be negative");
  return (uint64_t)d;
}

Napi::Value EventToJs(Napi::Env env, const PagerEvent& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", e.type);
  o.Set("message", e.message);
  if (!e.pages.empty()) {
    Napi::Array a = Napi::Array::New(env, e.pages.size());
    for (size_t i = 0; i < e.pages.size(); i++) a[i] = Napi::Number::New(env, (double)e.pages[i]);
    o.Set("pages", a);
  }
  if (e.type == "progress") {
    o.Set("done", Napi::Number::New(env, (double)e.done));
    o.Set("total", Napi::Number::New(env, (double)e.total));
  }
  if (e.err) o.Set("errno", Napi::Number::New(env, e.err));
  if (!e.syscall.empty()) o.Set("syscall", e.syscall);
  return o;
}

// Optional array of CPU numbers (validated against this machine's CPUs in native/pager.ts).
std::vector<uint32_t> CpuList(Napi::Object o, const char* name) {
  std::vector<uint32_t> out;
  Napi::Value v = o.Get(name);
  if (v.IsUndefined() || v.IsNull()) return out;
  if (!v.IsArray()) throw Error("EM_BAD_ARG", std::string("option '") + name + "' must be an array of CPU numbers");
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value c = a[i];
    if (!c.IsNumber() || c.As<Napi::Number>().DoubleValue() < 0 || c.As<Napi::Number>().DoubleValue() >= CPU_SETSIZE)
      throw Error("EM_BAD_ARG", std::string("option '") + name + "' holds something that is not a CPU number");
    out.push_back(c.As<Napi::Number>().Uint32Value());
  }
  return out;
}

// RegionSpec[] (native.d.ts) -> RegionConfig
std::vector<RegionConfig> Regions(Napi::Value rv, const char* what) {
  if (!rv.IsArray()) throw Error("EM_BAD_ARG", std::string(what) + " must be an array of regions");
  std::vector<RegionConfig> out;
  Napi::Array ra = rv.As<Napi::Array>();
  for (uint32_t i = 0; i < ra.Length(); i++) {
    if (!Napi::Value(ra[i]).IsObject()) throw Error("EM_BAD_ARG", std::string(what) + ": entry " + std::to_string(i) + " is not a region");
    Napi::Object r = Napi::Value(ra[i]).As<Napi::Object>();
    RegionConfig rc;
    rc.start = ParseAddress(r.Get("start"), "region start");
    rc.length = Num(r, "length", 0, true);
    std::string kind = r.Get("kind").ToString().Utf8Value();
    if (kind != "memfd" && kind != "anon") throw Error("EM_BAD_ARG", "region kind must be 'memfd' or 'anon', not '" + kind + "'");
    rc.memfd = kind == "memfd";
    rc.name = r.Get("name").IsString() ? r.Get("name").As<Napi::String>().Utf8Value() : "ram" + std::to_string(i);
    if (rc.memfd) {
      if (!r.Get("filePath").IsString()) throw Error("EM_BAD_ARG", "memfd region '" + rc.name + "' needs filePath");
      rc.file_path = r.Get("filePath").As<Napi::String>().Utf8Value();
      rc.file_offset = Num(r, "fileOffset", 0);
    }
    if (r.Has("keyId") && !r.Get("keyId").IsUndefined()) {
      int64_t k = Num(r, "keyId", 0);
      if (k < 0 || k >= (int64_t)1 << 21) throw Error("EM_BAD_ARG", "region '" + rc.name + "': keyId must be a whole number below 2^21");
      rc.key_id = k;
    }
    out.push_back(rc);
  }
  return out;
}

Napi::Value PagerStart(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw Error("EM_BAD_ARG", "pagerStart expects an options object");
    Napi::Object o = info[0].As<Napi::Object>();
    PagerConfig cfg;
    cfg.pid = (pid_t)Num(o, "pid", 0, true);
    cfg.uffd = (int)Num(o, "uffdFd", 0, true);
    cfg.target_uffd = o.Has("uffdTargetFd") && o.Get("uffdTargetFd").IsNumber() ? (int)Num(o, "uffdTargetFd", 0) : -1;
    cfg.cap_pages = (uint32_t)Num(o, "capPages", 0, true);
    cfg.prefetch_max = (uint32_t)Num(o, "prefetchMax", 64);
    cfg.evict_batch = (uint32_t)Num(o, "evictBatch", 256);
    cfg.reattach = o.Get("reattach").ToBoolean();
    cfg.fault_cpus = CpuList(o, "faultCpus");
    cfg.evict_cpus = CpuList(o, "evictCpus");
    cfg.follow_faults = !o.Has("followFaults") || o.Get("followFaults").IsUndefined() || o.Get("followFaults").ToBoolean();
    cfg.test_skip_wp = o.Get("_testUnsafeSkipWriteProtect").ToBoolean();
    cfg.test_fail_drops = o.Get("_testFailDrops").ToBoolean();
    cfg.test_nonblocking_reads = o.Get("_testNonBlockingReads").ToBoolean();
    cfg.test_no_splice = o.Get("_testNoSplice").ToBoolean();
    cfg.test_defer_faults = o.Get("_testDeferFaults").ToBoolean();
    cfg.test_race_window_ms = (uint32_t)Num(o, "_testRaceWindowMs", 0);
    cfg.test_skip_cow_wp = o.Get("_testUnsafeSkipCowProtect").ToBoolean();
    {
      Napi::Value fp = o.Get("_testFailPuts");  // true: every other batch, 'always': every batch
      cfg.test_fail_puts = fp.IsString() && fp.As<Napi::String>().Utf8Value() == "always" ? 2 : fp.ToBoolean() ? 1 : 0;
    }
    {
      Napi::Value sp = o.Get("_testStalePipe");  // true: a stray page now and then; 'unsafe-keep': not discarded
      cfg.test_stale_pipe = sp.IsString() && sp.As<Napi::String>().Utf8Value() == "unsafe-keep" ? 2 : sp.ToBoolean() ? 1 : 0;
    }
    Napi::Value pol = o.Get("policy");
    if (pol.IsString()) {
      std::string p = pol.As<Napi::String>().Utf8Value();
      if (p != "fifo" && p != "refault") throw Error("EM_BAD_ARG", "policy must be 'refault' or 'fifo', not '" + p + "'");
      cfg.fifo = p == "fifo";
    }
    cfg.regions = Regions(o.Get("regions"), "option 'regions'");
    if (cfg.regions.empty()) throw Error("EM_BAD_ARG", "no guest RAM regions given");
    if (cfg.reattach && o.Get("remotePages").IsArray()) {
      Napi::Array rp = o.Get("remotePages").As<Napi::Array>();
      for (uint32_t i = 0; i < rp.Length(); i++) {
        std::vector<uint32_t> v;
        Napi::Array a = Napi::Value(rp[i]).As<Napi::Array>();
        for (uint32_t j = 0; j < a.Length(); j++) v.push_back(Napi::Value(a[j]).As<Napi::Number>().Uint32Value());
        cfg.remote_pages.push_back(std::move(v));
      }
    }

    auto h = std::make_unique<PagerHandle>();
    if (o.Get("onEvent").IsFunction())
      h->events = std::make_shared<Channel>(env, o.Get("onEvent").As<Napi::Function>(), "elasticmem-events");
    std::unique_ptr<StoreBackend> backend;
    Napi::Value sv = o.Get("store");
    if (!sv.IsObject()) throw Error("EM_BAD_ARG", "option 'store' is required");
    Napi::Object so = sv.As<Napi::Object>();
    std::string skind = so.Get("kind").ToString().Utf8Value();
    if (skind == "memory") {
      backend = std::make_unique<MemBackend>(MemStoreFromValue(so.Get("handle")), so.Get("vm").ToString().Utf8Value());
    } else if (skind == "bridge") {
      if (!o.Get("onRequest").IsFunction()) throw Error("EM_BAD_ARG", "a bridge store needs onRequest");
      h->requests = std::make_shared<Channel>(env, o.Get("onRequest").As<Napi::Function>(), "elasticmem-requests");
      auto b = std::make_unique<BridgeBackend>(h->requests);
      h->bridge = b.get();
      backend = std::move(b);
    } else {
      throw Error("EM_BAD_ARG", "store kind must be 'memory' or 'bridge'");
    }
    std::weak_ptr<Channel> events = h->events;
    auto sink = [events](PagerEvent ev) {
      auto ch = events.lock();
      if (!ch) return;
      ch->post(new PagerEvent(std::move(ev)), [](Napi::Env env, Napi::Function fn, PagerEvent* e) {
        std::unique_ptr<PagerEvent> own(e);
        fn.Call({EventToJs(env, *e)});
      });
    };
    h->pager = std::make_shared<Pager>(std::move(cfg), std::move(backend), sink);
    h->pager->start();
    return Napi::External<PagerHandle>::New(env, h.release(), [](Napi::Env, PagerHandle* p) {
      if (p->pager) p->pager->abandon();
      delete p;
    });
  });
}

Napi::Value JsPagerStats(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    em::PagerStats s = HandleOf(info)->pager->stats();
    Napi::Object o = Napi::Object::New(env);
    auto n = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
    n("faults", s.faults); n("zeroFills", s.zero_fills); n("fetches", s.fetches); n("evictions", s.evictions);
    n("cleanDrops", s.clean_drops); n("storeWrites", s.store_writes); n("prefetched", s.prefetched);
    n("wpFaults", s.wp_faults); n("discards", s.discards); n("evictAborts", s.evict_aborts);
    n("residentPages", s.resident); n("localCapPages", s.cap); n("remotePages", s.remote);
    n("totalPages", s.total_pages); n("storeRetries", s.store_retries); n("lostPages", s.lost_pages);
    n("capWaits", s.cap_waits); n("capWaitUs", s.cap_wait_us); n("evictBatches", s.evict_batches);
    o.Set("faultCpu", Napi::Number::New(env, s.fault_cpu));
    o.Set("evictMode", Napi::String::New(env, s.evict_mode));
    n("metadataBytes", s.metadata_bytes);
    o.Set("storeState", s.store_state);
    o.Set("storeError", s.store_error);
    o.Set("draining", s.draining);
    Napi::Object lat = Napi::Object::New(env);
    lat.Set("p50", s.latency.p50); lat.Set("p90", s.latency.p90); lat.Set("p99", s.latency.p99);
    lat.Set("max", s.latency.max); lat.Set("count", Napi::Number::New(env, (double)s.latency.count));
    o.Set("faultLatencyUs", lat);
    Napi::Object hist = Napi::Object::New(env);
    Napi::Array b = Napi::Array::New(env, s.latency.bounds.size()), c = Napi::Array::New(env, s.latency.counts.size());
    for (size_t i = 0; i < s.latency.bounds.size(); i++) { b[i] = s.latency.bounds[i]; c[i] = (double)s.latency.counts[i]; }
    hist.Set("boundsUs", b);
    hist.Set("counts", c);
    o.Set("latencyHistogram", hist);
    return o;
  });
}

Napi::Value PagerSetCap(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    PagerHandle* h = HandleOf(info);
    int64_t cap = ArgInt(info, 1, "capPages");
    if (cap < 1 || cap > (int64_t)h->pager->stats().total_pages)
      throw Error("EM_BAD_CAP", "the resident cap must be between 1 page and the guest's RAM (" +
                                    std::to_string(h->pager->stats().total_pages) + " pages)");
    h->pager->set_cap((uint32_t)cap);
    return info.Env().Undefined();
  });
}

Napi::Value PagerAddRegions(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    PagerHandle* h = HandleOf(info);
    if (info.Length() < 2) throw Error("EM_BAD_ARG", "pagerAddRegions expects a pager and an array of regions");
    h->pager->add_regions(Regions(info[1], "regions to add"));
    return info.Env().Undefined();
  });
}

struct DetachResult {
  std::string code, message, syscall;
  int err = 0;
};

Napi::Value PagerDetach(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    PagerHandle* h = HandleOf(info);
    if (info.Length() < 2 || !info[1].IsFunction()) throw Error("EM_BAD_ARG", "pagerDetach needs a callback");
    if (h->detach_thread.joinable()) throw Error("EM_BUSY", "a detach is already running");
    auto done = std::make_shared<Channel>(info.Env(), info[1].As<Napi::Function>(), "elasticmem-detach");
    std::shared_ptr<Pager> pager = h->pager;
    h->detach_thread = std::thread([pager, done, h] {
      block_process_signals();
      auto* res = new DetachResult();
      try {
        pager->detach();
      } catch (const Error& e) {
        res->code = e.code(); res->message = e.what(); res->err = e.err(); res->syscall = e.syscall();
      } catch (const std::exception& e) {
        res->code = "EM_INTERNAL"; res->message = e.what(); res->err = errno_of(e);
      }
      done->post(res, [h](Napi::Env env, Napi::Function fn, DetachResult* r) {
        std::unique_ptr<DetachResult> own(r);
        if (h->detach_thread.joinable()) h->detach_thread.join();
        if (r->code.empty()) {
          h->pager.reset();  // detached: drop the pager (closes fds), then the channels
          if (h->events) h->events->release();
          if (h->requests) h->requests->release();
          fn.Call({env.Null()});
        } else {
          fn.Call({MakeError(env, r->code, r->message, r->err, r->syscall).Value()});
        }
      });
      done->release();
    });
    return info.Env().Undefined();
  });
}

Napi::Value PagerAbandon(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto* h = info[0].As<Napi::External<PagerHandle>>().Data();
    if (h->pager) {
      h->pager->abandon();
      h->pager.reset();
    }
    if (h->events) h->events->release();
    if (h->requests) h->requests->release();
    return info.Env().Undefined();
  });
}

Napi::Value PagerComplete(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    auto* h = info[0].As<Napi::External<PagerHandle>>().Data();
    if (!h->bridge || !h->pager) return info.Env().Undefined();
    uint32_t id = (uint32_t)ArgInt(info, 1, "id");
    std::string err = info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "";
    Napi::Array arr;
    bool has = info.Length() > 3 && info[3].IsArray();
    if (has) arr = info[3].As<Napi::Array>();
    h->bridge->complete(id, err, has ? &arr : nullptr);
    return info.Env().Undefined();
  });
}

// Hold an exclusive flock on a per-target lock file for as long as this monitor serves
// the target: a second monitor is refused, while a monitor that died (kill -9) releases
// it with its fds, so a restarted one may take over. Returns the fd (close to release).
Napi::Value TargetLock(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    std::string path = ArgString(info, 0, "path");
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw_sys("open", "creating the attach lock " + path);
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      close(fd);
      if (err == EWOULDBLOCK)
        throw Error("EM_ALREADY_ATTACHED", "this process is already attached by a running elasticmem monitor (lock " + path + " is held); detach it first", err, "flock");
      throw_sys("flock", "locking " + path, err);
    }
    return Napi::Number::New(info.Env(), fd);
  });
}

}  // namespace

void RegisterPager(Napi::Env env, Napi::Object exports) {
  exports.Set("pagerStart", Napi::Function::New(env, PagerStart));
  exports.Set("pagerStats", Napi::Function::New(env, JsPagerStats));
  exports.Set("pagerSetCap", Napi::Function::New(env, PagerSetCap));
  exports.Set("pagerAddRegions", Napi::Function::New(env, PagerAddRegions));
  exports.Set("pagerDetach", Napi::Function::New(env, PagerDetach));
  exports.Set("pagerAbandon", Napi::Function::New(env, PagerAbandon));
  exports.Set("pagerComplete", Napi::Function::New(env, PagerComplete));
  exports.Set("targetLock", Napi::Function::New(env, TargetLock));
}

}  // namespace em
