// uffd-move-remote: can a monitor drop a private page out of another process with
// UFFDIO_MOVE?
//
// Asked while looking for a way to drop private guest pages without MADV_DONTNEED (which
// only the target itself may do, and which raises UFFD_EVENT_REMOVE per range when the
// pager subscribes to discards; docs/architecture.md, known limits). The idea: move the
// victims into one scratch area of the target, registered with the same uffd, then
// empty the area with one madvise. This program registers a source and a scratch range
// in its own mm, then issues UFFDIO_MOVE once from a forked child (a process whose mm is
// not the uffd's, as the monitor is) and once from itself.
// Measured on this machine's 6.18 kernel: from the child EINVAL, from the owner 0. The
// kernel moves pages only for the process that owns the mm; the monitor cannot.
//
//   gcc -O2 -o /tmp/uffd-move-remote backend/bench/uffd-move-remote.c && /tmp/uffd-move-remote
//
// Debian 12's headers predate UFFDIO_MOVE (Linux 6.8), hence the definitions below.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef UFFDIO_MOVE
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
  __u64 mode;
  __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#endif

#define PAGE 4096
#define PAGES 16

static int move_one(int uffd, char* dst, char* src, const char* who) {
  struct uffdio_move mv = {.dst = (uintptr_t)dst, .src = (uintptr_t)src, .len = PAGE, .mode = 0};
  int rc = ioctl(uffd, UFFDIO_MOVE, &mv);
  printf("UFFDIO_MOVE from %s: %s\n", who, rc == 0 ? "moved" : strerror(errno));
  return rc;
}

int main(void) {
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) { perror("userfaultfd"); return 1; }
  struct uffdio_api api = {.api = UFFD_API};
  if (ioctl(uffd, UFFDIO_API, &api)) { perror("UFFDIO_API"); return 1; }
  char* src = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char* area = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (src == MAP_FAILED || area == MAP_FAILED) { perror("mmap"); return 1; }
  memset(src, 7, PAGES * PAGE);
  // Not inherited by the child: its pages stay exclusive to this process (else EBUSY).
  madvise(src, PAGES * PAGE, MADV_DONTFORK);
  madvise(area, PAGES * PAGE, MADV_DONTFORK);
  struct uffdio_register rs = {.range = {(uintptr_t)src, PAGES * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
  struct uffdio_register ra = {.range = {(uintptr_t)area, PAGES * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_REGISTER, &rs) || ioctl(uffd, UFFDIO_REGISTER, &ra)) { perror("UFFDIO_REGISTER"); return 1; }
  setvbuf(stdout, NULL, _IONBF, 0);
  pid_t child = fork();
  if (child == 0) _exit(move_one(uffd, area, src, "another process") == 0 ? 0 : 1);
  int status = 0;
  waitpid(child, &status, 0);
  move_one(uffd, area + PAGE, src + PAGE, "the mm's own process");
  return 0;
}
