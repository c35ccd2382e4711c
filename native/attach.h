// Getting hold of a target's memory: a userfaultfd created inside the target (so it
// serves faults of the target's mm) and copied into the monitor, and dropping the
// target's private pages from inside it. Built on inject.h.
#pragma once
#include <sys/types.h>
#include <sys/uio.h>
#include <cstddef>
#include <string>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>

// Debian 12's kernel headers stop at UFFD_FEATURE_WP_HUGETLBFS_SHMEM (bit 12); the
// running kernel (6.18) has more. Defined here for everyone who includes this file.
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

namespace em {

class RemoteTask;

struct Acquired {
  int fd = -1;         // the monitor's copy (O_CLOEXEC; the file is O_NONBLOCK)
  int target_fd = -1;  // the same uffd's number inside the target, which keeps it open
  std::string route;   // "syscall" | "dev-userfaultfd" | "existing"
};

// Create a new userfaultfd inside `pid` (O_CLOEXEC|O_NONBLOCK) and copy it into the
// monitor with pidfd_getfd. First the plain userfaultfd() syscall (privileged target);
// if that fails, /dev/userfaultfd opened by the monitor is passed in over SCM_RIGHTS
// and USERFAULTFD_IOC_NEW runs inside the target (unprivileged target, e.g. libvirt's
// QEMU). The target keeps its descriptor for good (a dead monitor must not make the
// kernel unregister the ranges: evicted pages would read back as zeros). Every helper
// descriptor is closed in both processes. Throws EM_NO_PROCESS, EM_PTRACE, EM_INJECT,
// EM_NO_UFFD (both routes failed: set vm.unprivileged_userfaultfd=1).
Acquired acquire_uffd(pid_t pid);

// Find a userfaultfd already in `pid`'s fd table (left by a monitor that died) and
// copy it into the monitor; route "existing". Prefers one that went through
// UFFDIO_API (non-zero features in fdinfo), then the lowest fd. False if none.
bool find_target_uffd(pid_t pid, Acquired* out);

// MADV_DONTNEED the given ranges of `pid`'s memory from inside it: a remote
// process_madvise accepts only COLD/PAGEOUT/WILLNEED, but on itself any advice works.
// One injection session per call: pidfd_open(self), process_madvise in batches of up
// to 1024 ranges (touching ranges merged first; every byte checked), close. Throws
// em::Error with errno; ranges before a failing one have been dropped by then.
// If a range is registered with a uffd using UFFD_FEATURE_EVENT_REMOVE, the target
// blocks until that uffd's reader reads the UFFD_EVENT_REMOVE: keep it reading.
// `borrowed`: a thread of pid already stopped for injection (else one is borrowed).
void remote_madvise_dontneed(pid_t pid, const struct iovec* iov, size_t n, RemoteTask* borrowed = nullptr);

// A pipe whose write end lives in the target and whose read end in the monitor: the
// evictor of private memory vmsplices the target's pages into it from inside the target
// (the pipe then references the pages themselves, not copies) and reads them here.
struct TargetPipe {
  int read_fd = -1;          // in the monitor (O_CLOEXEC)
  int target_write_fd = -1;  // in the target (O_CLOEXEC)
};
TargetPipe open_target_pipe(pid_t pid);

// close(target_fd) inside `pid` (one injection). Throws EM_INJECT with errno.
void close_target_fd(pid_t pid, int target_fd);

// vmsplice the given page-aligned ranges of `pid`'s memory into the pipe `target_fd`
// (an fd in the target), from inside it, non-blocking. Returns the bytes passed; on a
// failure throws, with *done_out the bytes passed before it (they are in the pipe).
size_t remote_vmsplice(pid_t pid, int target_fd, const struct iovec* iov, size_t n, size_t* done_out,
                       RemoteTask* borrowed = nullptr);

}  // namespace em
