// wp-async-cost: what the kernel's asynchronous write-protect costs on this machine.
//
// Asked while looking for a way to see resident pages being used (the pager sees only
// faults; docs/bench-pager.md "Tracking writes to resident pages"): a uffd registered
// with UFFD_FEATURE_WP_ASYNC resolves write-protect faults inside the kernel, and
// ioctl(PAGEMAP_SCAN, PM_SCAN_WP_MATCHING, PAGE_IS_WRITTEN) reports and re-protects the
// pages written since the last scan: a per-page "written" bit, the accessed bit of a
// workload whose every touch writes. This program times, for 16384 pages in random
// order: a plain write, the first write after UFFDIO_WRITEPROTECT (an async
// write-protect fault each), the scan-and-re-protect ioctl, and the writes after it.
//
//   gcc -O2 -o /tmp/wp-async-cost backend/bench/wp-async-cost.c
//   taskset -c 0 /tmp/wp-async-cost [shm]      (shm: a shared memfd mapping, else anonymous)
//
// Debian 12's headers predate these interfaces (Linux 6.7), hence the definitions below.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
struct em_page_region { uint64_t start, end, categories; };
struct em_pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
#define EM_PAGEMAP_SCAN _IOWR('f', 16, struct em_pm_scan_arg)
#define EM_PM_SCAN_WP_MATCHING 1
#define EM_PAGE_IS_WRITTEN 2

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}
static void die(const char* what) { perror(what); exit(1); }

int main(int argc, char** argv) {
  const size_t n = 16384, P = 4096;
  const int shm = argc > 1 && strcmp(argv[1], "shm") == 0;
  char* m;
  if (shm) {
    int fd = memfd_create("wp-async-cost", 0);
    if (fd < 0 || ftruncate(fd, (off_t)(n * P)) != 0) die("memfd");
    m = mmap(NULL, n * P, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  } else {
    m = mmap(NULL, n * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  }
  if (m == MAP_FAILED) die("mmap");
  memset(m, 1, n * P);
  int u = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  if (u < 0) die("userfaultfd (run as root)");
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED};
  if (ioctl(u, UFFDIO_API, &api)) die("UFFDIO_API");
  struct uffdio_register reg = {.range = {(uint64_t)(uintptr_t)m, n * P}, .mode = UFFDIO_REGISTER_MODE_WP};
  if (ioctl(u, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
  uint32_t* perm = malloc(n * sizeof *perm);
  for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
  srand(1);
  for (size_t i = n - 1; i > 0; i--) { size_t j = (size_t)rand() % (i + 1); uint32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
  int pagemap = open("/proc/self/pagemap", O_RDONLY);
  if (pagemap < 0) die("open pagemap");
  struct em_page_region* regions = malloc(n * sizeof *regions);
  printf("%s, %zu pages, us per page: plain write | first write after WRITEPROTECT | after PAGEMAP_SCAN re-protect;"
         " ioctl us: WRITEPROTECT | PAGEMAP_SCAN\n", shm ? "memfd (shared)" : "anonymous", n);
  for (int round = 0; round < 5; round++) {
    double t0 = now_ns();
    for (size_t i = 0; i < n; i++) m[perm[i] * P + 8]++;
    double t1 = now_ns();
    struct uffdio_writeprotect wp = {.range = {(uint64_t)(uintptr_t)m, n * P}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(u, UFFDIO_WRITEPROTECT, &wp)) die("UFFDIO_WRITEPROTECT");
    double t2 = now_ns();
    for (size_t i = 0; i < n; i++) m[perm[i] * P + 8]++;
    double t3 = now_ns();
    struct em_pm_scan_arg a = {.size = sizeof a, .flags = EM_PM_SCAN_WP_MATCHING, .start = (uint64_t)(uintptr_t)m,
                               .end = (uint64_t)(uintptr_t)m + n * P, .vec = (uint64_t)(uintptr_t)regions, .vec_len = n,
                               .category_mask = EM_PAGE_IS_WRITTEN, .return_mask = EM_PAGE_IS_WRITTEN};
    if (ioctl(pagemap, EM_PAGEMAP_SCAN, &a) < 0) die("PAGEMAP_SCAN");
    double t4 = now_ns();
    for (size_t i = 0; i < n; i++) m[perm[i] * P + 8]++;
    double t5 = now_ns();
    printf("%.3f | %.3f | %.3f ; %.0f | %.0f\n", (t1 - t0) / n / 1e3, (t3 - t2) / n / 1e3, (t5 - t4) / n / 1e3,
           (t2 - t1) / 1e3, (t4 - t3) / 1e3);
  }
  return 0;
}
