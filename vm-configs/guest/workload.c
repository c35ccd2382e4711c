/*
 * elasticmem test-guest workload: a memory integrity checker that runs as the only
 * program of the test guest and reports on the serial console in a fixed,
 * machine-readable form. Tests and benchmarks read these lines from the host:
 *
 *   ELASTICMEM-WORKLOAD-START size=<MiB> pages=<n> pattern=<p> write=<f> seed=<s> passes=<k> pause=<ms> uptime_ms=<t>
 *   ELASTICMEM-MEMTOTAL kb=<MemTotal>
 *   ELASTICMEM-WORKLOAD-FILLED ms=<t>
 *   ELASTICMEM-WORKLOAD pass=<k> pages=<n> verified=<n> corrupt=<n> ms=<t>
 *   ELASTICMEM-CORRUPT pass=<k> page=<i> word=<w> got=<hex> want=<hex>   (first few per pass)
 *   ELASTICMEM-WORKLOAD-DONE corrupt=<total>
 *
 * Every page holds 512 64-bit words derived from (seed, page index, generation of the
 * page). A page read back as zeros, as another page's data, or as an older generation
 * of itself (a lost write or a stale read by the pager) fails verification.
 *
 * One pass: verify every page (pages=verified=number checked, corrupt=number that did
 * not match; a corrupt page is repaired so the next pass counts only new damage), then
 * rewrite write*pages pages chosen by the access pattern, bumping their generation.
 *   seq    - verify in address order, rewrite a contiguous run that advances each pass
 *   random - verify in a fresh random order, rewrite uniformly random pages
 *   zipf   - verify in a fresh random order, rewrite pages drawn from a Zipf(0.99)
 *            distribution whose hot ranks are scattered over the region
 * ms is the duration of that pass (verify + rewrite).
 *
 * Parameters come from the kernel command line (/proc/cmdline), so the same image
 * serves every test: em.size=<MiB> em.pattern=seq|random|zipf em.write=<0..1>
 * em.seed=<n> em.passes=<n, 0 = forever> em.pause=<ms between passes, default 0>.
 * (em.after=poweroff|idle is read by /init, after the workload exits.)
 *
 * A forked watcher prints ELASTICMEM-MEMTOTAL whenever MemTotal changes (hot-added
 * memory shows up within half a second even while a long pass runs); the main loop
 * also prints it every 5 passes, at most every 2 s (small sizes make passes of ~15 ms).
 *
 * Built static (gcc -static -O2) because the initramfs has no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)
#define MAX_CORRUPT_REPORTS 8

struct params {
  unsigned long size_mib;
  char pattern[16];
  double write;
  uint64_t seed;
  unsigned long passes;
  unsigned long pause_ms;
};

/* One write(2) per line so lines from the watcher and the main loop never interleave. */
static void emit(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  ssize_t off = 0;
  while (off < n) {
    ssize_t w = write(1, buf + off, (size_t)(n - off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    off += w;
  }
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static long read_memtotal_kb(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "MemTotal: %ld kB", &kb) == 1) break;
  }
  fclose(f);
  return kb;
}

static long uptime_ms(void) {
  FILE *f = fopen("/proc/uptime", "r");
  if (!f) return -1;
  double up = -1;
  if (fscanf(f, "%lf", &up) != 1) up = -1;
  fclose(f);
  return up < 0 ? -1 : (long)(up * 1000.0);
}

/* Reads em.* from /proc/cmdline; unknown or malformed values fall back to defaults and say so. */
static void parse_params(struct params *p) {
  p->size_mib = 64;
  strcpy(p->pattern, "seq");
  p->write = 0.25;
  p->seed = 1;
  p->passes = 0;
  p->pause_ms = 0;
  char cmd[4096] = {0};
  int fd = open("/proc/cmdline", O_RDONLY);
  if (fd >= 0) {
    ssize_t n = read(fd, cmd, sizeof cmd - 1);
    if (n < 0) n = 0;
    cmd[n] = 0;
    close(fd);
  }
  char *save = NULL;
  for (char *tok = strtok_r(cmd, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
    if (strncmp(tok, "em.", 3) != 0) continue;
    char *eq = strchr(tok, '=');
    if (!eq) continue;
    *eq = 0;
    const char *key = tok + 3, *val = eq + 1;
    char *end = NULL;
    if (!strcmp(key, "size")) {
      unsigned long v = strtoul(val, &end, 10);
      if (*end || v == 0) emit("ELASTICMEM-WORKLOAD-WARN bad em.size=%s, using %lu", val, p->size_mib);
      else p->size_mib = v;
    } else if (!strcmp(key, "pattern")) {
      if (strcmp(val, "seq") && strcmp(val, "random") && strcmp(val, "zipf"))
        emit("ELASTICMEM-WORKLOAD-WARN bad em.pattern=%s (seq|random|zipf), using %s", val, p->pattern);
      else snprintf(p->pattern, sizeof p->pattern, "%s", val);
    } else if (!strcmp(key, "write")) {
      double v = strtod(val, &end);
      if (*end || v < 0 || v > 1) emit("ELASTICMEM-WORKLOAD-WARN bad em.write=%s (0..1), using %.3f", val, p->write);
      else p->write = v;
    } else if (!strcmp(key, "seed")) {
      unsigned long long v = strtoull(val, &end, 10);
      if (*end) emit("ELASTICMEM-WORKLOAD-WARN bad em.seed=%s, using %" PRIu64, val, p->seed);
      else p->seed = v;
    } else if (!strcmp(key, "passes")) {
      unsigned long v = strtoul(val, &end, 10);
      if (*end) emit("ELASTICMEM-WORKLOAD-WARN bad em.passes=%s, using %lu", val, p->passes);
      else p->passes = v;
    } else if (!strcmp(key, "pause")) {
      unsigned long v = strtoul(val, &end, 10);
      if (*end) emit("ELASTICMEM-WORKLOAD-WARN bad em.pause=%s, using %lu", val, p->pause_ms);
      else p->pause_ms = v;
    }
  }
}

/* splitmix64: a cheap, well-mixed function of (seed, page, generation). */
static inline uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

static inline uint64_t page_base(uint64_t seed, uint64_t page, uint32_t gen) {
  return mix(seed ^ mix(page ^ ((uint64_t)gen << 40)));
}

static inline uint64_t word_of(uint64_t base, unsigned i) {
  /* base never repeats across pages/gens; the odd multiplier makes every word differ. */
  return base ^ ((uint64_t)(i + 1) * 0xD6E8FEB86659FD93ull);
}

static void fill_page(uint64_t *w, uint64_t seed, uint64_t page, uint32_t gen) {
  uint64_t b = page_base(seed, page, gen);
  for (unsigned i = 0; i < WORDS; i++) w[i] = word_of(b, i);
}

/* Returns the index of the first wrong word, or -1. */
static int check_page(const uint64_t *w, uint64_t seed, uint64_t page, uint32_t gen) {
  uint64_t b = page_base(seed, page, gen);
  uint64_t diff = 0;
  for (unsigned i = 0; i < WORDS; i++) diff |= w[i] ^ word_of(b, i);
  if (!diff) return -1;
  for (unsigned i = 0; i < WORDS; i++)
    if (w[i] != word_of(b, i)) return (int)i;
  return 0;
}

/* xorshift64*: the random source for orders and write selection. */
static uint64_t rng_state;
static inline uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Dull;
}
static inline uint64_t rnd_below(uint64_t n) { return rnd() % n; }

static void shuffle(uint32_t *a, uint64_t n) {
  for (uint64_t i = n - 1; i > 0; i--) {
    uint64_t j = rnd_below(i + 1);
    uint32_t t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

/* Zipf(s=0.99) over ranks 0..n-1 by inverse CDF; rank r maps to page hot[r]. */
static double *zipf_cdf;
static uint32_t zipf_draw(uint64_t n) {
  double u = (double)(rnd() >> 11) / 9007199254740992.0;
  uint64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    uint64_t mid = (lo + hi) / 2;
    if (zipf_cdf[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return (uint32_t)lo;
}

static void *xmap(size_t bytes, int populate) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | (populate ? MAP_POPULATE : 0), -1, 0);
  if (p == MAP_FAILED) {
    emit("ELASTICMEM-WORKLOAD-ERROR mmap %zu bytes: %s", bytes, strerror(errno));
    exit(2);
  }
  return p;
}

/* Forked before the big allocation: reports MemTotal changes (virtio-mem hot-add). */
static void start_memtotal_watcher(void) {
  pid_t pid = fork();
  if (pid != 0) return; /* parent, or fork failed: the main loop still reports */
  long last = read_memtotal_kb();
  for (;;) {
    usleep(500 * 1000);
    long kb = read_memtotal_kb();
    if (kb != last) {
      emit("ELASTICMEM-MEMTOTAL kb=%ld", kb);
      last = kb;
    }
  }
}

int main(void) {
  struct params p;
  parse_params(&p);
  const uint64_t npages = (uint64_t)p.size_mib * (1024u * 1024u / PAGE);
  const int seq = !strcmp(p.pattern, "seq"), zipf = !strcmp(p.pattern, "zipf");
  rng_state = mix(p.seed) | 1;

  emit("ELASTICMEM-WORKLOAD-START size=%lu pages=%" PRIu64 " pattern=%s write=%.3f seed=%" PRIu64
       " passes=%lu pause=%lu uptime_ms=%ld",
       p.size_mib, npages, p.pattern, p.write, p.seed, p.passes, p.pause_ms, uptime_ms());
  emit("ELASTICMEM-MEMTOTAL kb=%ld", read_memtotal_kb());
  start_memtotal_watcher();

  uint32_t *gen = xmap(npages * sizeof(uint32_t), 1);
  uint32_t *order = xmap(npages * sizeof(uint32_t), 1);
  uint32_t *hot = NULL;
  for (uint64_t i = 0; i < npages; i++) order[i] = (uint32_t)i;
  if (zipf) {
    hot = xmap(npages * sizeof(uint32_t), 1);
    zipf_cdf = xmap(npages * sizeof(double), 1);
    for (uint64_t i = 0; i < npages; i++) hot[i] = (uint32_t)i;
    shuffle(hot, npages);
    double sum = 0;
    for (uint64_t i = 0; i < npages; i++) sum += 1.0 / pow((double)(i + 1), 0.99);
    double acc = 0;
    for (uint64_t i = 0; i < npages; i++) {
      acc += 1.0 / pow((double)(i + 1), 0.99) / sum;
      zipf_cdf[i] = acc;
    }
    zipf_cdf[npages - 1] = 1.0;
  }

  uint64_t t0 = now_ms();
  uint64_t *mem = xmap(npages * PAGE, 0);
  for (uint64_t pg = 0; pg < npages; pg++) fill_page(mem + pg * WORDS, p.seed, pg, 0);
  emit("ELASTICMEM-WORKLOAD-FILLED ms=%" PRIu64, now_ms() - t0);

  const uint64_t nwrite = (uint64_t)(p.write * (double)npages + 0.5);
  uint64_t seq_cursor = 0, total_corrupt = 0, last_memtotal = now_ms();
  for (unsigned long pass = 1; p.passes == 0 || pass <= p.passes; pass++) {
    uint64_t start = now_ms(), corrupt = 0;
    if (!seq) shuffle(order, npages);
    for (uint64_t k = 0; k < npages; k++) {
      uint64_t pg = order[k];
      uint64_t *w = mem + pg * WORDS;
      int bad = check_page(w, p.seed, pg, gen[pg]);
      if (bad >= 0) {
        if (corrupt < MAX_CORRUPT_REPORTS) {
          uint64_t want = word_of(page_base(p.seed, pg, gen[pg]), (unsigned)bad);
          emit("ELASTICMEM-CORRUPT pass=%lu page=%" PRIu64 " word=%d got=%016" PRIx64 " want=%016" PRIx64,
               pass, pg, bad, w[bad], want);
        }
        corrupt++;
        fill_page(w, p.seed, pg, gen[pg]); /* repair: the next pass reports only new damage */
      }
    }
    for (uint64_t k = 0; k < nwrite; k++) {
      uint64_t pg;
      if (seq) pg = (seq_cursor++) % npages;
      else if (zipf) pg = hot[zipf_draw(npages)];
      else pg = rnd_below(npages);
      gen[pg]++;
      fill_page(mem + pg * WORDS, p.seed, pg, gen[pg]);
    }
    total_corrupt += corrupt;
    emit("ELASTICMEM-WORKLOAD pass=%lu pages=%" PRIu64 " verified=%" PRIu64 " corrupt=%" PRIu64 " ms=%" PRIu64,
         pass, npages, npages, corrupt, now_ms() - start);
    if (pass % 5 == 0 && now_ms() - last_memtotal >= 2000) {
      emit("ELASTICMEM-MEMTOTAL kb=%ld", read_memtotal_kb());
      last_memtotal = now_ms();
    }
    if (p.pause_ms) usleep((useconds_t)(p.pause_ms * 1000));
  }
  emit("ELASTICMEM-WORKLOAD-DONE corrupt=%" PRIu64, total_corrupt);
  return total_corrupt ? 1 : 0;
}
