// The floor under any userfaultfd pager on this machine: the latency of one MISSING
// fault served by the barest possible handler. One process; a handler thread blocks in
// read() on the uffd and answers each fault with one UFFDIO_COPY of a prepared page;
// the main thread touches N fresh pages one by one and times each touch.
//
//   em-bench-uffd-floor N anon|memfd
//
// Prints one JSON line: the median and p99 of the round trip seen by the faulting
// thread (touch to return) and of the handler's service time (read() returned to
// UFFDIO_COPY returned), in µs. `memfd` uses a shared memfd region (what the pager
// benchmark pages); `anon` private anonymous memory.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul

static int uffd;
static uint8_t* region;
static uint8_t* src;
static size_t npages;
static double* service_us;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void die(const char* what) {
  fprintf(stderr, "em-bench-uffd-floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void* handler(void* arg) {
  (void)arg;
  for (size_t served = 0; served < npages;) {
    struct uffd_msg msg;
    ssize_t n = read(uffd, &msg, sizeof msg);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("read(uffd)");
    }
    double t0 = now_us();
    if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
    uint64_t addr = msg.arg.pagefault.address & ~(PAGE - 1);
    // Each page carries its index, so the toucher can check it got the right content.
    *(uint64_t*)src = (addr - (uint64_t)region) / PAGE;
    struct uffdio_copy c = {.dst = addr, .src = (uint64_t)src, .len = PAGE, .mode = 0};
    if (ioctl(uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST) die("UFFDIO_COPY");
    service_us[served++] = now_us() - t0;
  }
  return NULL;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc != 3 || atol(argv[1]) < 10 || (strcmp(argv[2], "anon") && strcmp(argv[2], "memfd"))) {
    fprintf(stderr, "usage: %s N(>=10) anon|memfd\n", argv[0]);
    return 2;
  }
  npages = (size_t)atol(argv[1]);
  size_t len = npages * PAGE;
  if (!strcmp(argv[2], "memfd")) {
    int fd = memfd_create("elasticmem-floor", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)len) < 0) die("memfd");
    region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  } else {
    region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  if (region == MAP_FAILED) die("mmap");
  madvise(region, len, MADV_NOHUGEPAGE);
  src = aligned_alloc(PAGE, PAGE);
  memset(src, 0xa5, PAGE);
  service_us = calloc(npages, sizeof *service_us);
  double* trip_us = calloc(npages, sizeof *trip_us);
  if (!src || !service_us || !trip_us) die("alloc");

  uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  if (uffd < 0) die("userfaultfd (run as root)");
  struct uffdio_api api = {.api = UFFD_API, .features = 0};
  if (ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API");
  struct uffdio_register reg = {.range = {.start = (uint64_t)region, .len = len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");

  pthread_t th;
  if (pthread_create(&th, NULL, handler, NULL)) die("pthread_create");
  size_t wrong = 0;
  for (size_t i = 0; i < npages; i++) {
    double t0 = now_us();
    uint64_t v = *(volatile uint64_t*)(region + i * PAGE);
    trip_us[i] = now_us() - t0;
    if (v != i) wrong++;
  }
  pthread_join(th, NULL);
  if (wrong) {
    fprintf(stderr, "em-bench-uffd-floor: %zu pages arrived with the wrong content\n", wrong);
    return 1;
  }
  qsort(trip_us, npages, sizeof *trip_us, cmp);
  qsort(service_us, npages, sizeof *service_us, cmp);
  printf("{\"faults\":%zu,\"kind\":\"%s\",\"roundTripUs\":{\"p50\":%.2f,\"p99\":%.2f},\"serviceUs\":{\"p50\":%.2f,\"p99\":%.2f}}\n", npages, argv[2],
         trip_us[npages / 2], trip_us[npages * 99 / 100], service_us[npages / 2], service_us[npages * 99 / 100]);
  return 0;
}
