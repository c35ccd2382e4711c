// The `bench pager` workload: one process touching pages of a memory region the way a
// guest would, timed from the inside, then verified page by page.
//
//   em-bench-workload MODE SIZE_BYTES WORKLOAD TOUCHES WARMUP SEED [MONITOR_PID]
//     MODE      memfd (shared memfd named "elasticmem-bench", for the pager)
//               anon  (private anonymous memory, for the kernel-swap baseline)
//               floor-memfd | floor-anon: the like-for-like uffd floor. The region
//                 starts empty, registered with a userfaultfd of our own, and a bare
//                 handler thread answers each fault with one UFFDIO_COPY of a prepared
//                 page (words 0 and 1 set); the touches are timed exactly as in the
//                 other modes, so their slow-touch p50 is what a fault costs this very
//                 loop (its page order and per-touch work) under the barest handler.
//                 Verification checks words 0-2 only (the rest is not filled).
//     WORKLOAD  seq (cyclic scan), random (uniform), zipf (skew 0.99, pages permuted)
//     MONITOR_PID  exit when this process dies: a SIGKILLed benchmark must not leave
//               us waiting forever on a page fault no monitor will serve
//
// Line protocol on stdin/stdout (stdout lines are JSON unless noted):
//   -> {"ready":true,...}          after every page was filled with its pattern
//   <- go                          the pager has attached and evicted down to its cap
//   -> {"warm":true}               after WARMUP untimed touches
//   <- run
//   -> {"progress":N,"total":T}    about every 1% of the timed touches
//   -> {"touches":T,...}           the timed result
//   <- verify
//   -> integrity ok pages=N | integrity corrupt=N firstbad=I   (plain text)
//   <- verify (again, any number of times) | exit | EOF
//
// Page pattern: word 0 = page index, word 1 = seed, word 2 = generation (bumped by each
// touch), words 3..511 = a hash of (page, word, seed). A touch writes word 2 and reads
// words 0 and 2 back; verification checks all 512 words against the generation recorded here.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8)
// A touch slower than this took a page fault: a resident touch costs well under 1 µs.
#define FAULT_NS 2000

static uint64_t rng_state;
static inline uint64_t rng(void) {  // splitmix64: fast, good enough for sampling pages
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static inline uint64_t below(uint64_t n) { return (uint64_t)(((__uint128_t)rng() * n) >> 64); }
static inline uint64_t mix(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
  return x;
}
static inline uint64_t pattern(uint64_t page, uint64_t word, uint64_t seed) { return mix((page << 9 | word) ^ (seed * 0x9e3779b97f4a7c15ull)); }

// The page sequence of the workload (globals: set once in main).
static int kind;  // 0 seq, 1 random, 2 zipf
static uint64_t npages, cursor;
static double* cdf;     // zipf: cumulative probability by rank
static uint32_t* perm;  // zipf: rank -> page
static inline uint64_t next_page(void) {
  if (kind == 0) { uint64_t p = cursor; cursor = cursor + 1 == npages ? 0 : cursor + 1; return p; }
  if (kind == 1) return below(npages);
  double u = (double)(rng() >> 11) * (1.0 / 9007199254740992.0);
  uint64_t lo = 0, hi = npages - 1;
  while (lo < hi) { uint64_t mid = (lo + hi) / 2; if (cdf[mid] < u) lo = mid + 1; else hi = mid; }
  return perm[lo];
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char* what) {
  fprintf(stderr, "em-bench-workload: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void* watchdog(void* arg) {
  pid_t monitor = (pid_t)(intptr_t)arg;
  int pfd = (int)syscall(SYS_pidfd_open, monitor, 0);
  if (pfd >= 0) {
    struct pollfd p = {pfd, POLLIN, 0};
    while (poll(&p, 1, -1) < 0 && errno == EINTR) {}
  } else {
    while (kill(monitor, 0) == 0 || errno == EPERM) sleep(1);
  }
  // Exiting also ends a thread that sleeps in a userfaultfd fault (the wait is killable).
  _exit(3);
  return NULL;
}

// Wait for one command line; EOF means the benchmark went away: exit quietly.
static void expect(const char* cmd) {
  char line[64];
  if (!fgets(line, sizeof line, stdin)) exit(0);
  line[strcspn(line, "\r\n")] = 0;
  if (strcmp(line, cmd) != 0) {
    if (strcmp(line, "exit") == 0) exit(0);
    fprintf(stderr, "em-bench-workload: expected '%s', got '%s'\n", cmd, line);
    exit(2);
  }
}

// Touch latency histogram: 100 ns buckets up to 100 µs, then 10 µs buckets up to ~10 ms.
#define FINE 1000
#define COARSE 1000
static uint64_t hist[FINE + COARSE + 1];
static inline void record(uint64_t ns) {
  uint64_t b = ns / 100;
  if (b >= FINE) { b = FINE + (ns - 100000) / 10000; if (b > FINE + COARSE) b = FINE + COARSE; }
  hist[b]++;
}
static double bucket_upper_us(size_t b) { return b < FINE ? (b + 1) * 0.1 : 100.0 + (double)(b - FINE + 1) * 10.0; }
// Percentile over buckets >= from (from = first "fault" bucket to get fault latencies only).
static double pct(double q, size_t from) {
  uint64_t total = 0, acc = 0;
  for (size_t i = from; i <= FINE + COARSE; i++) total += hist[i];
  if (!total) return 0;
  uint64_t want = (uint64_t)ceil(q * (double)total);
  if (!want) want = 1;
  for (size_t i = from; i <= FINE + COARSE; i++) { acc += hist[i]; if (acc >= want) return bucket_upper_us(i); }
  return bucket_upper_us(FINE + COARSE);
}

static int run(int argc, char** argv);

// floor-* modes: the bare handler (the same as workloads/uffd-floor.c), on the thread
// that runs the touches' CPU (it inherits the worker's affinity).
static int floor_uffd = -1;
static uint8_t* floor_base;
static uint64_t floor_seed;
static void* floor_handler(void* arg) {
  (void)arg;
  uint8_t* src = aligned_alloc(PAGE, PAGE);
  if (!src) die("aligned_alloc");
  memset(src, 0, PAGE);
  for (;;) {
    struct uffd_msg msg;
    ssize_t n = read(floor_uffd, &msg, sizeof msg);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      die("read(uffd)");
    }
    if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
    uint64_t addr = msg.arg.pagefault.address & ~(uint64_t)(PAGE - 1);
    ((uint64_t*)src)[0] = (addr - (uint64_t)floor_base) / PAGE;
    ((uint64_t*)src)[1] = floor_seed;
    struct uffdio_copy c = {.dst = addr, .src = (uint64_t)src, .len = PAGE, .mode = 0};
    if (ioctl(floor_uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST) die("UFFDIO_COPY");
  }
  return NULL;
}

static void floor_attach(uint8_t* base, uint64_t size, int shmem) {
  floor_base = base;
  floor_uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  if (floor_uffd < 0) die("userfaultfd (the floor needs root)");
  struct uffdio_api api = {.api = UFFD_API, .features = shmem ? UFFD_FEATURE_MISSING_SHMEM : 0};
  if (ioctl(floor_uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API");
  struct uffdio_register reg = {.range = {.start = (uint64_t)base, .len = size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(floor_uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");
  pthread_t th;
  if (pthread_create(&th, NULL, floor_handler, NULL)) die("pthread_create");
}

struct run_args {
  int argc;
  char** argv;
  int rc;
};

static void* run_thread(void* arg) {
  struct run_args* a = arg;
  a->rc = run(a->argc, a->argv);
  return NULL;
}

// The work runs on a second thread while the main thread waits for it, as in QEMU,
// whose main thread waits in its event loop while vCPU threads run the guest: the
// pager borrows the main thread for what it must run inside the target (dropping
// private pages), so it stops a waiting thread there, not the one being measured.
int main(int argc, char** argv) {
  struct run_args a = {argc, argv, 0};
  pthread_t th;
  if (pthread_create(&th, NULL, run_thread, &a)) die("pthread_create");
  // The worker keeps the CPUs the workload was started on (bench pager --pin); the
  // main thread may run on any, as QEMU's main loop is not pinned with its vCPUs
  // (libvirt's <emulatorpin> apart from <vcpupin>). Best effort: a cpuset may refuse.
  cpu_set_t any;
  CPU_ZERO(&any);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  for (long c = 0; c < ncpu && c < CPU_SETSIZE; c++) CPU_SET((int)c, &any);
  (void)sched_setaffinity(0, sizeof any, &any);
  if (pthread_join(th, NULL)) die("pthread_join");
  return a.rc;
}

static int run(int argc, char** argv) {
  if (argc != 7 && argc != 8) {
    fprintf(stderr, "usage: %s memfd|anon SIZE_BYTES seq|random|zipf TOUCHES WARMUP SEED [MONITOR_PID]\n", argv[0]);
    return 2;
  }
  const char* mode = argv[1];
  // floor-memfd / floor-anon: the same memory kind, paged by our own bare handler
  const int floor = !strncmp(mode, "floor-", 6);
  if (floor) mode += 6;
  uint64_t size = strtoull(argv[2], NULL, 10);
  const char* wl = argv[3];
  uint64_t touches = strtoull(argv[4], NULL, 10), warmup = strtoull(argv[5], NULL, 10), seed = strtoull(argv[6], NULL, 10);
  kind = !strcmp(wl, "seq") ? 0 : !strcmp(wl, "random") ? 1 : !strcmp(wl, "zipf") ? 2 : -1;
  if (kind < 0 || size < PAGE || size % PAGE || touches == 0 || (strcmp(mode, "memfd") && strcmp(mode, "anon"))) {
    fprintf(stderr, "em-bench-workload: bad arguments\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 8) {
    pthread_t th;
    if (pthread_create(&th, NULL, watchdog, (void*)(intptr_t)atoi(argv[7]))) die("pthread_create");
  }
  npages = size / PAGE;
  rng_state = seed;

  uint8_t* base;
  if (!strcmp(mode, "memfd")) {
    int fd = memfd_create(floor ? "elasticmem-floor" : "elasticmem-bench", MFD_CLOEXEC);
    if (fd < 0) die("memfd_create");
    if (ftruncate(fd, (off_t)size) < 0) die("ftruncate");
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  } else {
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  if (base == MAP_FAILED) die("mmap");
  // 4 KiB pages on both sides: a huge page would make one fault move 512 pages.
  if (madvise(base, size, MADV_NOHUGEPAGE) < 0 && errno != EINVAL) die("madvise(NOHUGEPAGE)");

  uint32_t* gen = calloc(npages, sizeof *gen);
  if (!gen) die("calloc");
  // Zipf: rank r (0 = hottest) has weight 1/(r+1)^0.99; ranks map to pages through a
  // random permutation so the hot pages are scattered, not one contiguous run.
  if (kind == 2) {
    cdf = malloc(npages * sizeof *cdf);
    perm = malloc(npages * sizeof *perm);
    if (!cdf || !perm) die("malloc");
    double s = 0;
    for (uint64_t r = 0; r < npages; r++) { s += 1.0 / pow((double)(r + 1), 0.99); cdf[r] = s; }
    for (uint64_t r = 0; r < npages; r++) cdf[r] /= s;
    for (uint64_t i = 0; i < npages; i++) perm[i] = (uint32_t)i;
    for (uint64_t i = npages - 1; i > 0; i--) { uint64_t j = below(i + 1); uint32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
  }

  if (floor) {
    floor_seed = seed;
    floor_attach(base, size, !strcmp(mode, "memfd"));
  } else {
    for (uint64_t p = 0; p < npages; p++) {
      uint64_t* w = (uint64_t*)(base + p * PAGE);
      w[0] = p; w[1] = seed; w[2] = 0;
      for (uint64_t i = 3; i < WORDS; i++) w[i] = pattern(p, i, seed);
    }
  }
  printf("{\"ready\":true,\"pid\":%d,\"mode\":\"%s\",\"start\":\"%p\",\"length\":%llu,\"pages\":%llu}\n", getpid(), mode, (void*)base,
         (unsigned long long)size, (unsigned long long)npages);

  uint64_t mismatches = 0;
  expect("go");
  for (uint64_t t = 0; t < warmup; t++) {
    uint64_t p = next_page();
    // One touch: write word 2 (the page's new generation), then read it and word 0 back.
    // Write first, as a guest's stores usually reach a page before its loads are served
    // from cache: the fault that brings the page in is then a write fault.
    volatile uint64_t* w = (volatile uint64_t*)(base + p * PAGE);
    w[2] = ++gen[p];
    if (w[0] != p || w[2] != gen[p]) mismatches++;
  }
  printf("{\"warm\":true}\n");
  expect("run");
  uint64_t step = touches / 100 ? touches / 100 : 1, next_report = step, faults = 0;
  uint64_t start = now_ns(), prev = start;
  for (uint64_t t = 0; t < touches; t++) {
    uint64_t p = next_page();
    // One touch: write word 2 (the page's new generation), then read it and word 0 back.
    // Write first, as a guest's stores usually reach a page before its loads are served
    // from cache: the fault that brings the page in is then a write fault.
    volatile uint64_t* w = (volatile uint64_t*)(base + p * PAGE);
    w[2] = ++gen[p];
    if (w[0] != p || w[2] != gen[p]) mismatches++;
    uint64_t now = now_ns();
    uint64_t d = now - prev;
    prev = now;
    record(d);
    if (d > FAULT_NS) faults++;
    if (t + 1 == next_report) {
      printf("{\"progress\":%llu,\"total\":%llu}\n", (unsigned long long)(t + 1), (unsigned long long)touches);
      next_report += step;
      prev = now_ns();  // the report's write is not part of any touch
    }
  }
  uint64_t elapsed = now_ns() - start;
  size_t fault_from = FAULT_NS / 100;
  printf("{\"touches\":%llu,\"seconds\":%.6f,\"usPerTouch\":%.4f,\"touchUs\":{\"p50\":%.1f,\"p99\":%.1f},"
         "\"slowTouches\":%llu,\"slowTouchUs\":{\"p50\":%.1f,\"p99\":%.1f},\"readMismatches\":%llu}\n",
         (unsigned long long)touches, (double)elapsed / 1e9, (double)elapsed / 1e3 / (double)touches, pct(0.5, 0), pct(0.99, 0),
         (unsigned long long)faults, pct(0.5, fault_from), pct(0.99, fault_from), (unsigned long long)mismatches);

  // Diagnostics: EM_BENCH_HIST=PREFIX writes the touch histogram to PREFIX.MODE (memfd:
  // the pager run, anon: kernel swap) as lines "bucket upper bound µs, touches" for the
  // non-empty buckets, to see where the time of the slow touches goes.
  const char* hist_prefix = getenv("EM_BENCH_HIST");
  if (hist_prefix && *hist_prefix) {
    char hist_path[4096];
    snprintf(hist_path, sizeof hist_path, "%s.%s", hist_prefix, mode);
    FILE* hf = fopen(hist_path, "w");
    if (!hf) die("EM_BENCH_HIST");
    for (size_t i = 0; i <= FINE + COARSE; i++)
      if (hist[i]) fprintf(hf, "%.1f %llu\n", bucket_upper_us(i), (unsigned long long)hist[i]);
    fclose(hf);
  }

  expect("verify");
  // TEST ONLY (EM_BENCH_TEST_CORRUPT=PAGE): damage one word of that page behind the
  // generations' back, so a test can see the benchmark report "corrupt" and fail.
  const char* corrupt_at = getenv("EM_BENCH_TEST_CORRUPT");
  if (corrupt_at && *corrupt_at && !floor) {
    uint64_t p = strtoull(corrupt_at, NULL, 0) % npages;
    ((uint64_t*)(base + p * PAGE))[WORDS - 1] ^= 1;
  }
  for (;;) {  // verify again on request (after the pager detached), until exit or EOF
    uint64_t corrupt = 0, firstbad = (uint64_t)-1;
    for (uint64_t p = 0; p < npages; p++) {
      const uint64_t* w = (const uint64_t*)(base + p * PAGE);
      int bad = w[0] != p || w[1] != seed || w[2] != gen[p];
      for (uint64_t i = 3; !bad && !floor && i < WORDS; i++) bad = w[i] != pattern(p, i, seed);
      if (bad) { corrupt++; if (firstbad == (uint64_t)-1) firstbad = p; }
    }
    if (corrupt) printf("integrity corrupt=%llu firstbad=%llu\n", (unsigned long long)corrupt, (unsigned long long)firstbad);
    else printf("integrity ok pages=%llu\n", (unsigned long long)npages);
    char line[64];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "verify", 6) != 0) return 0;
  }
}
