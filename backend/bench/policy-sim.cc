// policy-sim: a trace-driven simulator of the pager's replacement policy.
//
// It models what the pager can see, not what a kernel with hardware accessed bits sees:
//   - a touch of a resident dirty page is invisible (the page is writable);
//   - a touch of a resident clean page (mapped write-protected) is a write-protect fault:
//     the page becomes dirty and gets kFlRef, as in Pager::handle_wp;
//   - a touch of a remote page is a missing fault: the page is fetched (plus the pager's
//     sequential prefetch run), mapped writable (every bench touch writes first, so every
//     fault is a write fault) and inserted with its refault distance (eviction clock now
//     minus the clock when it was evicted, kept in PageMeta::prev while it is remote);
//   - eviction is asynchronous: the evictor starts when residency passes cap - slack and
//     evicts in batches of 256 down to cap - 2*slack; a batch stays in flight for
//     --window touches (pages write-protected, being copied out); a touch of an in-flight
//     page aborts its eviction (write-protect fault) and re-inserts it as hot, as
//     evict_batch does. Victims leave in index order (the clock is assigned after sorting).
//   - a fault at the cap waits for the batch in flight.
// The per-page metadata is the pager's own 16-byte PageMeta (native/page_table.h): a
// policy may use its links, flags and the 16-bit pad, nothing else per page.
// Two oracles are there for reference only: `lru` sees every touch (like the kernel's
// LRU with accessed bits), and the static frequency-optimal hit rate is printed for zipf.
//
// The touch streams are those of backend/bench/workloads/workload.c, with the same seed
// logic (splitmix64 seeded with --seed; the zipf permutation drawn first; then
// --warmup untimed touches and the timed ones). Hit rate = 1 - fetches / timed touches,
// as `bench pager` reports it. Simulator-only variants, to see how a policy copes with
// what the bench does not show: --shift N draws a new zipf permutation every N timed
// touches (the hot set moves); --workload loopmix[:PAGES] scans PAGES pages (default
// cap/2) in a loop with half the touches and spreads the other half uniformly.
// --window calibrates the eviction window: 700 touches gives the abort count the real
// bench shows on zipf. --arm 1 turns on arming of dirty pages (the pager does that only
// for stores whose fetch costs >= 30 us; the embedded store never).
//
// Policies (--policy a,b,...):
//   fifo, lru (oracle), slru[:P]   the pager's FIFO, LRU, the SLRU the pager used until
//                                  the refault-rate policy (P: protected share in 1/64)
//   rr[/key=value...]              the pager's refault-rate policy (native/replacement.h;
//                                  keys: the PolicyTuning fields, see make_policy)
//   gd:MODE:MUL:MAX                GreedyDual over a calendar queue, value from refaults
//   bayes:A:B:K, aged:TAU:KMAX:F   refault-rate estimates with side arrays (not 16 bytes
//                                  a page): the ceiling the quantised rr approximates
//   scan:K:D:INIT                  what written-bit tracking (uffd-wp async + PAGEMAP_SCAN)
//                                  would buy: sees every touch, but only as a bit read
//                                  every K evictions (docs/bench-pager.md, "Tracking
//                                  writes to resident pages"); not in the pager
//
// Measured (32768 pages, cap 16384, seed 42, window 700), zipf hit rate: fifo 0.878,
// slru 0.889, lru 0.901, gd 0.898 (best variant), bayes without aging 0.908, aged
// (tau 4 caps) 0.908, rr 0.908 (0.902 before it adapted its constants to a still or
// moving hot set: rr/adapt=0/age=4); scan:4096:7:32 0.914 (200k async write-protect
// faults); static optimum 0.931.
//
// Build and run:
//   g++ -O2 -std=c++17 -o /tmp/policy-sim backend/bench/policy-sim.cc
//   /tmp/policy-sim --workload zipf --policy fifo,slru,lru,rr [--pages 32768 --cap 16384]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "../../native/page_table.h"
#include "../../native/replacement.h"

using namespace em;

// ---------------------------------------------------------------- workload (workload.c)

struct Workload {
  int kind;  // 0 seq, 1 random, 2 zipf
  uint64_t npages, cursor = 0, rng_state;
  std::vector<double> cdf;
  std::vector<uint32_t> perm;
  uint64_t rng() {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return (uint64_t)(((__uint128_t)rng() * n) >> 64); }
  Workload(int k, uint64_t n, uint64_t seed) : kind(k), npages(n), rng_state(seed) {
    if (kind == 2) {
      cdf.resize(n);
      perm.resize(n);
      double s = 0;
      for (uint64_t r = 0; r < n; r++) { s += 1.0 / pow((double)(r + 1), 0.99); cdf[r] = s; }
      for (uint64_t r = 0; r < n; r++) cdf[r] /= s;
      for (uint64_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
      for (uint64_t i = n - 1; i > 0; i--) { uint64_t j = below(i + 1); std::swap(perm[i], perm[j]); }
    }
  }
  uint64_t loop = 0;  // kind 3 (simulator only): size of the looped region
  uint64_t next() {
    if (kind == 3) {  // half the touches scan pages [0, loop) in order, half are uniform over the rest
      if (rng() & 1) { uint64_t p = cursor; cursor = cursor + 1 == loop ? 0 : cursor + 1; return p; }
      return loop + below(npages - loop);
    }
    if (kind == 0) { uint64_t p = cursor; cursor = cursor + 1 == npages ? 0 : cursor + 1; return p; }
    if (kind == 1) return below(npages);
    double u = (double)(rng() >> 11) * (1.0 / 9007199254740992.0);
    uint64_t lo = 0, hi = npages - 1;
    while (lo < hi) { uint64_t mid = (lo + hi) / 2; if (cdf[mid] < u) lo = mid + 1; else hi = mid; }
    return perm[lo];
  }
  // hit rate of a cache that holds the `slots` most probable pages and nothing else
  double static_opt(uint64_t slots) const {
    if (kind == 0) return 0;  // (a cyclic scan: any fixed set gives slots/npages, but prefetch changes the count)
    if (kind == 1) return (double)slots / (double)npages;
    return cdf[std::min(slots, npages) - 1];
  }
};

// ---------------------------------------------------------------- pager model

struct Sim;

struct Policy {
  Sim* s = nullptr;
  virtual ~Policy() {}
  // list_insert: `hot` as the pager's callers pass it; table[idx].prev still holds the
  // eviction clock of a refaulted page (kNil if it never left), as in the pager.
  virtual void insert(uint32_t idx, bool hot) = 0;
  virtual void remove(uint32_t idx) = 0;
  // pick_victims: unlink and return up to n resident pages
  virtual void pick(size_t n, std::vector<uint32_t>& out) = 0;
  virtual void touched(uint32_t) {}  // oracle only: a touch of a resident page
  virtual bool oracle() const { return false; }
};

struct Stats {
  uint64_t fetches = 0, prefetched = 0, wp = 0, evictions = 0, aborts = 0, capwaits = 0;
};

struct Sim {
  std::vector<PageMeta> t;
  uint32_t cap, slack, high, low, batch = 256, pmax = 64, window;
  bool arm_dirty = false;  // --arm 1: the pager's arming of dirty pages (on with slow stores)
  uint32_t clock = 0;
  uint64_t resident = 0, now = 0;
  uint32_t last_fault = kNil, streak = 0;
  Policy* pol;
  Stats st;
  std::vector<uint64_t> miss_by_page;  // diagnostics (--breakdown): timed fetches per page
  std::vector<uint32_t> inflight;  // victims of the batch in flight
  uint64_t done_at = 0;

  Sim(uint32_t npages, uint32_t cap_, uint32_t window_, Policy* p) : t(npages), cap(cap_), window(window_), pol(p) {
    pol->s = this;
    slack = std::max<uint32_t>(1, std::min<uint32_t>(std::max<uint32_t>(16, std::min<uint32_t>(batch, cap / 16)), cap / 4));
    high = cap > slack ? cap - slack : 0;
    low = cap > 2 * slack ? cap - 2 * slack : 0;
    for (uint32_t i = 0; i < npages; i++) {  // build_state: everything resident and dirty
      t[i].state = kResDirty;
      pol->insert(i, false);
      resident++;
    }
    while (resident > low) {  // the bench waits until the pager evicted down to the cap
      start_batch();
      finish_batch();
    }
  }

  void start_batch() {
    size_t want = std::min<uint64_t>(batch, resident - low);
    inflight.clear();
    pol->pick(want, inflight);
    std::sort(inflight.begin(), inflight.end());
    for (uint32_t i : inflight) {
      t[i].state = kEvicting;
      t[i].flags &= ~(kFlAbort | kFlRef | kFlArmed);
    }
    done_at = now + window;
  }
  void finish_batch() {
    for (uint32_t i : inflight) {
      PageMeta& m = t[i];
      if (m.flags & kFlAbort) {
        st.aborts++;
        m.flags &= ~kFlAbort;
        m.state = kResDirty;
        pol->insert(i, true);
        continue;
      }
      m.state = kRemote;
      m.prev = clock++;
      m.next = kNil;
      resident--;
      st.evictions++;
    }
    inflight.clear();
  }
  // the evictor: runs while residency is above the low watermark once it passed the high one
  bool evicting = false;
  void evictor() {
    if (!inflight.empty() && now >= done_at) finish_batch();
    if (inflight.empty()) {
      if (resident > high) evicting = true;
      if (evicting && resident > low) start_batch();
      else evicting = false;
      if (!inflight.empty() && window == 0) finish_batch();
    }
  }

  void map(uint32_t idx) {
    PageMeta& m = t[idx];
    bool hot = clock - m.prev <= cap;
    m.state = kResDirty;  // a write fault (or its prefetch run) is mapped writable
    pol->insert(idx, hot);
    resident++;
  }

  void touch(uint32_t idx) {
    PageMeta& m = t[idx];
    switch (m.state) {
      case kResDirty:
        if (m.flags & kFlArmed) { st.wp++; m.flags = (uint8_t)((m.flags & ~kFlArmed) | kFlRef); }
        if (pol->oracle()) pol->touched(idx);
        break;
      case kResClean:
        st.wp++;
        m.state = kResDirty;
        m.flags |= kFlRef;
        if (pol->oracle()) pol->touched(idx);
        break;
      case kEvicting:  // (an aborted page was unprotected: its later touches are invisible)
        if (!(m.flags & kFlAbort)) st.wp++;
        m.flags |= kFlAbort;
        break;
      case kRemote: {
        if (resident >= cap) {  // back-pressure: wait for the evictor
          st.capwaits++;
          while (resident >= cap) {
            if (inflight.empty()) { evicting = true; start_batch(); }
            finish_batch();
          }
        }
        st.fetches++;
        if (!miss_by_page.empty()) miss_by_page[idx]++;
        map(idx);
        bool seq = last_fault != kNil && idx > last_fault && idx - last_fault <= pmax + 1;
        streak = seq ? std::min<uint32_t>(streak + 1, 16) : 0;
        last_fault = idx;
        if (streak) {
          uint32_t n = std::min<uint32_t>(pmax, 1u << std::min<uint32_t>(streak + 1, 8));
          for (uint32_t j = idx + 1; j < t.size() && j <= idx + n; j++) {
            if (t[j].state != kRemote) break;
            map(j);
            st.prefetched++;
            last_fault = j;
          }
        }
        break;
      }
      default:
        break;
    }
    now++;
    evictor();
  }
};

// ---------------------------------------------------------------- policies

// The pager's own policy (native/replacement.h): 'fifo' and 'rr[/key=value...]'.
struct PagerPolicy : Policy {
  bool fifo;
  PolicyTuning tune;
  std::unique_ptr<ReplacementPolicy<std::vector<PageMeta>>> p;  // made at first use (s is set by then)
  std::vector<uint32_t> arm;  // (the simulator's touch() sees armed pages by their kFlArmed flag)
  explicit PagerPolicy(bool f, PolicyTuning t = {}) : fifo(f), tune(t) {}
  ReplacementPolicy<std::vector<PageMeta>>& get() {
    if (!p) p = std::make_unique<ReplacementPolicy<std::vector<PageMeta>>>(s->t, fifo, tune);
    return *p;
  }
  void insert(uint32_t i, bool hot) override { get().insert(i, hot, s->clock, s->cap, s->pmax); }
  void remove(uint32_t i) override { get().remove(i); }
  void pick(size_t n, std::vector<uint32_t>& out) override {
    arm.clear();
    get().pick(n, s->cap, s->arm_dirty, out, arm);
  }
};

// Oracle: LRU over every touch (the kernel with accessed bits, idealised).
struct Lru : Policy {
  PageList l;
  bool oracle() const override { return true; }
  void touched(uint32_t i) override { l.remove(s->t, i); l.push_back(s->t, i); }
  void insert(uint32_t i, bool) override { s->t[i].flags &= ~(kFlRef | kFlArmList | kFlArmed); l.push_back(s->t, i); }
  void remove(uint32_t i) override { l.remove(s->t, i); }
  void pick(size_t n, std::vector<uint32_t>& out) override {
    while (out.size() < n && l.size) { uint32_t i = l.head; l.remove(s->t, i); out.push_back(i); }
  }
};

// The pager's SLRU with refault admission (pick_victims as of 5f17610; arming off, as
// with the embedded store). prot_frac: protected share of the cap in 1/64.
struct Slru : Policy {
  static constexpr uint8_t kFlProt = 32;  // on the protected list (the flag bit the pager then called kFlProtected)
  PageList prob, prot;
  uint32_t prot64;
  explicit Slru(uint32_t p64 = 48) : prot64(p64) {}
  void insert(uint32_t i, bool hot) override {
    PageMeta& m = s->t[i];
    m.flags &= ~(kFlRef | kFlProt | kFlArmed);
    if (hot) { m.flags |= kFlProt; prot.push_back(s->t, i); }
    else prob.push_back(s->t, i);
  }
  void remove(uint32_t i) override {
    if (s->t[i].flags & kFlProt) prot.remove(s->t, i); else prob.remove(s->t, i);
    s->t[i].flags &= ~kFlProt;
  }
  void pick(size_t n, std::vector<uint32_t>& out) override {
    uint32_t pmaxp = (uint32_t)((uint64_t)s->cap * prot64 / 64);
    size_t scanned = 0, limit = 4 * n + 64;
    while (out.size() < n && (prob.size || prot.size)) {
      while (prot.size > pmaxp) { uint32_t d = prot.head; remove(d); prob.push_back(s->t, d); }
      uint32_t i;
      if (prob.size) {
        i = prob.head;
        if ((s->t[i].flags & kFlRef) && scanned++ < limit) { remove(i); insert(i, true); continue; }
        if (s->arm_dirty && s->t[i].state == kResDirty && !(s->t[i].flags & kFlArmed) && scanned++ < limit) {
          s->t[i].flags |= kFlArmed;  // write-protected: its next write traps and sets kFlRef
          prob.remove(s->t, i);
          prob.push_back(s->t, i);
          continue;
        }
      } else {
        i = prot.head;
      }
      remove(i);
      out.push_back(i);
    }
  }
};

// ---- candidates

// Per-page score in the pad's high byte (kept while the page is remote), list number in
// the low byte while resident.
static inline uint8_t score_of(const PageMeta& m) { return (uint8_t)(m.pad >> 8); }
static inline void set_score(PageMeta& m, uint8_t s) { m.pad = (uint16_t)((m.pad & 0xff) | (s << 8)); }
static inline uint8_t list_of(const PageMeta& m) { return (uint8_t)(m.pad & 0xff); }
static inline void set_list(PageMeta& m, uint8_t l) { m.pad = (uint16_t)((m.pad & 0xff00) | l); }

// Refault level: how far below the cap the refault distance was, in powers of two
// (0: d >= cap, or no refault; 1: d in [cap/2, cap); ...).
static inline int refault_level(Sim* s, const PageMeta& m) {
  if (m.prev == kNil) return -1;
  uint32_t d = s->clock - m.prev;
  if (d > s->cap) return 0;
  int lv = 1;
  uint64_t x = (uint64_t)d * 2;
  while (x <= s->cap && lv < 15) { lv++; x *= 2; }
  return lv;
}

// GreedyDual on a calendar queue: buckets B, current bucket L; a page is inserted
// at L + value(score) and evictions take the oldest page of the lowest non-empty bucket.
struct Gd : Policy {
  static constexpr int B = 64;
  PageList q[B];
  uint64_t L = 0;
  int mode, vmul, vmax;
  Gd(int mode_, int vmul_, int vmax_) : mode(mode_), vmul(vmul_), vmax(vmax_) {}
  int update_score(PageMeta& m, bool hot) {
    int lv = refault_level(s, m);
    int sc = score_of(m);
    if (lv < 0) { if (hot) sc = std::max(sc, 1); return sc; }  // aborted eviction: keep
    switch (mode) {
      case 0: sc = lv; break;                                  // last refault only
      case 1: sc = (sc + lv + 1) / 2; break;                   // average
      case 2: sc = std::max(lv, sc - 1); break;                // max, decaying by one
      case 3: sc = lv ? std::min(sc + 1, 15) : sc / 2; break;  // count of near refaults, halved on far ones
      case 4: sc = lv ? std::min(sc + lv, 30) : sc / 2; break;
    }
    return sc;
  }
  void insert(uint32_t i, bool hot) override {
    PageMeta& m = s->t[i];
    m.flags &= ~(kFlRef | kFlArmList | kFlArmed);
    int sc = update_score(m, hot);
    set_score(m, (uint8_t)sc);
    int v = std::min(1 + sc * vmul, vmax);
    if (v >= B) v = B - 1;
    uint8_t b = (uint8_t)((L + v) % B);
    set_list(m, b);
    q[b].push_back(s->t, i);
  }
  void remove(uint32_t i) override { q[list_of(s->t[i])].remove(s->t, i); }
  void pick(size_t n, std::vector<uint32_t>& out) override {
    uint64_t total = 0;
    for (auto& x : q) total += x.size;
    while (out.size() < n && total) {
      PageList& c = q[L % B];
      if (!c.size) { L++; continue; }
      uint32_t i = c.head;
      c.remove(s->t, i);
      out.push_back(i);
      total--;
    }
  }
};

// Exploration only (side arrays, not 16 bytes a page): evict the resident page with the
// lowest estimated touch rate p = (k + a) / (E + b), k = refaults seen, E = eviction-clock
// time spent remote in total; no aging. Buckets at 1/8 octave of p, FIFO within.
struct Bayes : Policy {
  static constexpr int B = 512;
  PageList q[B];
  std::vector<double> k, E;
  std::vector<uint16_t> bk;
  double a, b, abort_k;
  int lo = 0;
  Bayes(double a_, double b_, double ak) : a(a_), b(b_), abort_k(ak) {}
  void insert(uint32_t i, bool hot) override {
    if (k.empty()) { k.assign(s->t.size(), 0); E.assign(s->t.size(), 0); bk.assign(s->t.size(), 0); }
    PageMeta& m = s->t[i];
    m.flags &= ~(kFlRef | kFlArmList | kFlArmed);
    if (m.prev != kNil) { k[i] += 1; E[i] += (double)(s->clock - m.prev); }
    else if (hot) k[i] += abort_k;
    double p = (k[i] + a) / (E[i] + b);
    int bi = (int)std::floor(8 * std::log2(p)) + 400;
    bi = std::max(0, std::min(B - 1, bi));
    bk[i] = (uint16_t)bi;
    q[bi].push_back(s->t, i);
    if (bi < lo) lo = bi;
  }
  void remove(uint32_t i) override { q[bk[i]].remove(s->t, i); }
  void pick(size_t n, std::vector<uint32_t>& out) override {
    lo = 0;
    while (out.size() < n) {
      while (lo < B && !q[lo].size) lo++;
      if (lo == B) return;
      uint32_t i = q[lo].head;
      q[lo].remove(s->t, i);
      out.push_back(i);
    }
  }
};

// Exploration only (side arrays, exact priorities): Bayes with time decay. Priority =
// log2(p) + (clock at insertion) / tau: a resident page's estimate halves every tau
// evictions (it is not seen while resident, so its rate may have changed). Evict the min.
// Pages never seen refaulting get p = 0 unless `fresh` (then 1 / (fresh * cap)).
struct BayesAged : Policy {
  std::set<std::pair<double, uint32_t>> q;
  std::vector<double> k, E, key;
  double tau, kmax, fresh;
  BayesAged(double t, double km, double f) : tau(t), kmax(km), fresh(f) {}
  void insert(uint32_t i, bool hot) override {
    if (k.empty()) { k.assign(s->t.size(), 0); E.assign(s->t.size(), 0); key.assign(s->t.size(), 0); }
    PageMeta& m = s->t[i];
    m.flags &= ~(kFlRef | kFlArmList | kFlArmed);
    if (m.prev != kNil) { k[i] += 1; E[i] += std::max(1.0, (double)(s->clock - m.prev)); }
    else if (hot) k[i] += 1;
    if (kmax > 0 && k[i] > kmax) { E[i] *= kmax / k[i]; k[i] = kmax; }
    double p = k[i] > 0 ? k[i] / std::max(E[i], 1.0) : fresh > 0 ? 1.0 / (fresh * s->cap) : 1e-9;
    key[i] = std::log2(p) + (tau > 0 ? (double)s->clock / tau : 0);
    q.insert({key[i], i});
    m.prev = m.next = kNil;  // (not linked: the set orders them)
  }
  void remove(uint32_t i) override { q.erase({key[i], i}); }
  void pick(size_t n, std::vector<uint32_t>& out) override {
    while (out.size() < n && !q.empty()) { out.push_back(q.begin()->second); q.erase(q.begin()); }
  }
};

// Experiment: write tracking with uffd-wp async + PAGEMAP_SCAN (every bench touch writes,
// so "written since the last scan" is an accessed bit). Every K evictions the written
// bits of all resident pages are read and re-armed; cnt = cnt*D/8 + 64*bit. Victims:
// the lowest cnt (ties: lowest index). A new page starts at INIT (+64 if hot).
struct ScanLfu : Policy {
  std::vector<uint16_t> cnt; std::vector<uint8_t> ref, in;
  uint32_t K, D, init; uint64_t since = 0; uint64_t rearmed = 0;
  ScanLfu(uint32_t k, uint32_t d, uint32_t i0) : K(k), D(d), init(i0) {}
  bool oracle() const override { return true; }
  void grow() { if (cnt.empty()) { cnt.assign(s->t.size(), 0); ref.assign(s->t.size(), 0); in.assign(s->t.size(), 0); } }
  void touched(uint32_t i) override { grow(); ref[i] = 1; }
  void insert(uint32_t i, bool hot) override { grow(); cnt[i] = (uint16_t)(init + (hot ? 64 : 0)); ref[i] = 0; in[i] = 1; }
  void remove(uint32_t i) override { grow(); in[i] = 0; }
  void pick(size_t n, std::vector<uint32_t>& out) override {
    grow();
    since += n;
    if (since >= K) {
      since = 0;
      for (size_t i = 0; i < in.size(); i++) if (in[i]) { if (ref[i]) rearmed++; cnt[i] = (uint16_t)(cnt[i] * D / 8 + (ref[i] ? 64 : 0)); ref[i] = 0; }
    }
    std::vector<uint32_t> c;
    for (size_t i = 0; i < in.size(); i++) if (in[i]) c.push_back((uint32_t)i);
    size_t k = std::min(n, c.size());
    std::nth_element(c.begin(), c.begin() + k, c.end(), [&](uint32_t a, uint32_t b) { return cnt[a] < cnt[b] || (cnt[a] == cnt[b] && a < b); });
    for (size_t j = 0; j < k; j++) { in[c[j]] = 0; out.push_back(c[j]); }
  }
  ~ScanLfu() override { fprintf(stderr, "scanlfu: %llu async wp faults\n", (unsigned long long)rearmed); }
};

// ---------------------------------------------------------------- main

static std::unique_ptr<Policy> make_policy(const std::string& name) {
  if (name == "fifo") return std::make_unique<PagerPolicy>(true);
  if (name == "lru") return std::make_unique<Lru>();
  if (name == "slru") return std::make_unique<Slru>();
  if (name.rfind("slru:", 0) == 0) return std::make_unique<Slru>((uint32_t)atoi(name.c_str() + 5));
  if (name.rfind("gd:", 0) == 0) {
    int a = 0, b = 1, c = 63;
    sscanf(name.c_str() + 3, "%d:%d:%d", &a, &b, &c);
    return std::make_unique<Gd>(a, b, c);
  }
  if (name.rfind("bayes:", 0) == 0) {
    double a = 0, b = 1, ak = 0;
    sscanf(name.c_str() + 6, "%lf:%lf:%lf", &a, &b, &ak);
    return std::make_unique<Bayes>(a, b, ak);
  }
  if (name.rfind("aged:", 0) == 0) {
    double t = 0, km = 0, f = 0;
    sscanf(name.c_str() + 5, "%lf:%lf:%lf", &t, &km, &f);
    return std::make_unique<BayesAged>(t, km, f);
  }
  if (name.rfind("scan:", 0) == 0) {
    unsigned k = 4096, d = 6, i0 = 16;
    sscanf(name.c_str() + 5, "%u:%u:%u", &k, &d, &i0);
    return std::make_unique<ScanLfu>(k, d, i0);
  }
  // rr[/key=value...]: the pager's policy with its constants (PolicyTuning) changed, keys
  //   age=8       aging while the hot set moves: one ring slot per cap/age evictions
  //               (8 slots = one octave)
  //   opt=1       while it moves, a refault sooner than the page's mean replaces the mean
  //               (0: plain mean)
  //   sage=1      aging while it holds still
  //   sopt=0      the same as opt while it holds still
  //   adapt=1     0: the moving constants (age, opt) all the time
  //   win=16      windows of cap/win evictions decide between the two
  //   sdiv=8      a refault is a surprise when its distance * sdiv < the page's mean
  //   moving=200  the hot set moves when a window's surprises exceed moving/1000 of its refaults
  //   scan=2      sequential runs: 0 none, 1 pushed at the front of the lowest slot, 2 the
  //               pager's: a pending run, then a scan list evicted first, MRU first
  //   scanlg=76   runs of pages with lg >= this (mean refault distance >= cap/sqrt(2)) only
  //   untimed=32  a use seen while resident counts as a refault after cap/untimed evictions
  //   armed=8     the armed list holds at most cap/armed pages
  //   pending=2   the pending run holds at most pending * (prefetch + 1) pages
  if (name == "rr" || name.rfind("rr/", 0) == 0) {
    PolicyTuning t;
    size_t at = 2;
    while (at < name.size()) {
      size_t next = name.find('/', at + 1);
      std::string kv = name.substr(at + 1, next == std::string::npos ? std::string::npos : next - at - 1);
      at = next == std::string::npos ? name.size() : next;
      size_t eq = kv.find('=');
      std::string k = kv.substr(0, eq);
      uint32_t v = eq == std::string::npos ? 0 : (uint32_t)atoi(kv.c_str() + eq + 1);
      if ((k == "age" || k == "sage" || k == "win" || k == "sdiv" || k == "untimed" || k == "armed") && v == 0) { fprintf(stderr, "rr option %s must be at least 1\n", k.c_str()); exit(2); }
      if (k == "age") t.age_div = v;
      else if (k == "opt") t.sooner_replaces = v != 0;
      else if (k == "scan") t.scan_mode = v;
      else if (k == "scanlg") t.scan_lg = v;
      else if (k == "untimed") t.untimed_div = v;
      else if (k == "armed") t.armed_div = v;
      else if (k == "pending") t.pending_runs = v;
      else if (k == "sage") t.still_age_div = v;
      else if (k == "sopt") t.still_sooner_replaces = v != 0;
      else if (k == "adapt") t.adapt = v != 0;
      else if (k == "win") t.window_div = v;
      else if (k == "sdiv") t.surprise_div = v;
      else if (k == "moving") t.moving_permille = v;
      else { fprintf(stderr, "unknown rr option %s\n", k.c_str()); exit(2); }
    }
    return std::make_unique<PagerPolicy>(false, t);
  }
  fprintf(stderr, "unknown policy %s\n", name.c_str());
  exit(2);
}

int main(int argc, char** argv) {
  std::string wl = "zipf", policies = "fifo,slru,lru";
  uint64_t pages = 32768, cap = 16384, seed = 42, touches = 0, warmup = 0, window = 700, breakdown = 0, shift = 0, arm = 0;
  if (argc % 2 == 0) {
    fprintf(stderr, "usage: %s [--workload zipf|random|seq|loopmix[:PAGES]] [--policy NAME,...] [--pages N] [--cap N] [--seed N]\n"
                    "       [--touches N] [--warmup N] [--window TOUCHES] [--arm 0|1] [--shift TOUCHES] [--breakdown 1]\n", argv[0]);
    return 2;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--workload") wl = v;
    else if (k == "--policy") policies = v;
    else if (k == "--pages") pages = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--cap") cap = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--seed") seed = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--touches") touches = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--warmup") warmup = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--window") window = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--arm") arm = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--shift") shift = strtoull(v.c_str(), nullptr, 10);
    else if (k == "--breakdown") breakdown = strtoull(v.c_str(), nullptr, 10);
    else { fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
  }
  int kind = wl == "seq" ? 0 : wl == "random" ? 1 : wl == "zipf" ? 2 : wl.rfind("loopmix", 0) == 0 ? 3 : -1;
  if (kind < 0) { fprintf(stderr, "workload: seq, random or zipf\n"); return 2; }
  if (!touches) touches = (kind == 0 ? 6 : kind == 1 || kind == 3 ? 12 : 40) * pages;  // bench pager's defaults
  if (!warmup) warmup = pages;
  size_t start = 0;
  while (start <= policies.size()) {
    size_t end = policies.find(',', start);
    if (end == std::string::npos) end = policies.size();
    std::string name = policies.substr(start, end - start);
    start = end + 1;
    if (name.empty()) continue;
    Workload w(kind, pages, seed);
    if (kind == 3) w.loop = wl.size() > 8 ? strtoull(wl.c_str() + 8, nullptr, 10) : cap / 2;  // loopmix[:PAGES]
    auto pol = make_policy(name);
    Sim sim((uint32_t)pages, (uint32_t)cap, (uint32_t)window, pol.get());
    sim.arm_dirty = arm != 0;
    for (uint64_t i = 0; i < warmup; i++) sim.touch((uint32_t)w.next());
    sim.st = Stats{};
    if (breakdown && kind == 2) sim.miss_by_page.assign(pages, 0);
    for (uint64_t i = 0; i < touches; i++) {
      // --shift N (simulator only, not in workload.c): a new zipf permutation every N touches
      if (shift && kind == 2 && i && i % shift == 0)
        for (uint64_t a = pages - 1; a > 0; a--) { uint64_t b = w.below(a + 1); std::swap(w.perm[a], w.perm[b]); }
      sim.touch((uint32_t)w.next());
    }
    printf("%-6s %-16s hitRate %.4f  fetches %7llu  prefetched %6llu  evictions %7llu  wpFaults %6llu  aborts %5llu  capWaits %llu\n",
           wl.c_str(), name.c_str(), 1.0 - (double)sim.st.fetches / (double)touches, (unsigned long long)sim.st.fetches,
           (unsigned long long)sim.st.prefetched, (unsigned long long)sim.st.evictions, (unsigned long long)sim.st.wp,
           (unsigned long long)sim.st.aborts, (unsigned long long)sim.st.capwaits);
    if (auto* pp = dynamic_cast<PagerPolicy*>(pol.get()); pp && pp->p && pp->tune.adapt && !pp->fifo)
      printf("       %-16s windows %llu  moving %llu\n", name.c_str(), (unsigned long long)pp->p->windows(), (unsigned long long)pp->p->moving_windows());
    if (!sim.miss_by_page.empty()) {  // fetches by popularity rank, in rank bands
      printf("       misses by rank:");
      for (uint64_t lo = 0, hi = 1024; lo < pages; lo = hi, hi *= 2) {
        if (hi == 2048) hi = 4096;
        uint64_t sum = 0;
        for (uint64_t r = lo; r < std::min(hi, pages); r++) sum += sim.miss_by_page[w.perm[r]];
        printf("  [%llu,%llu) %llu", (unsigned long long)lo, (unsigned long long)std::min(hi, pages), (unsigned long long)sum);
      }
      printf("\n");
    }
  }
  if (kind == 2) {
    Workload w(kind, pages, seed);
    printf("%-6s %-16s hitRate %.4f  (static frequency-optimal, %llu slots = cap - 1.5 slack)\n", wl.c_str(), "opt", w.static_opt(cap - 384),
           (unsigned long long)(cap - 384));
  }
  return 0;
}
