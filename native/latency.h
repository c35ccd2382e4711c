// Lock-free log-linear latency histogram (µs): exact below 16 µs, then 8 buckets per
// power of two (≤12.5% error), so p50/p99 are cheap to keep on the fault path.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

namespace em {

class LatencyHistogram {
 public:
  static constexpr int kBuckets = 16 + 28 * 8;

  void record(uint64_t us) { counts_[bucket(us)].fetch_add(1, std::memory_order_relaxed); }

  static int bucket(uint64_t us) {
    if (us < 16) return (int)us;
    int e = 63 - __builtin_clzll(us);
    if (e > 31) return kBuckets - 1;
    int sub = (int)((us >> (e - 3)) & 7);
    return 16 + (e - 4) * 8 + sub;
  }
  // Upper bound (µs) of a bucket.
  static double upper(int b) {
    if (b < 16) return b + 1;
    int e = (b - 16) / 8 + 4, sub = (b - 16) % 8;
    return (double)((1ULL << e) + (uint64_t)(sub + 1) * (1ULL << (e - 3)));
  }

  struct Summary { double p50, p90, p99, max; uint64_t count; std::vector<double> bounds; std::vector<uint64_t> counts; };

  Summary summary() const {
    Summary s{0, 0, 0, 0, 0, {}, {}};
    uint64_t c[kBuckets];
    for (int i = 0; i < kBuckets; i++) { c[i] = counts_[i].load(std::memory_order_relaxed); s.count += c[i]; }
    int last = -1;
    for (int i = 0; i < kBuckets; i++) if (c[i]) last = i;
    for (int i = 0; i <= last; i++) { s.bounds.push_back(upper(i)); s.counts.push_back(c[i]); }
    if (!s.count) return s;
    auto pct = [&](double q) {
      uint64_t want = (uint64_t)(q * (double)s.count + 0.999999), acc = 0;
      if (want == 0) want = 1;
      for (int i = 0; i < kBuckets; i++) { acc += c[i]; if (acc >= want) return upper(i); }
      return upper(kBuckets - 1);
    };
    s.p50 = pct(0.50); s.p90 = pct(0.90); s.p99 = pct(0.99); s.max = upper(last);
    return s;
  }

 private:
  std::atomic<uint64_t> counts_[kBuckets] = {};
};

}  // namespace em
