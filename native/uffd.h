// Thin, checked wrappers over the userfaultfd ioctls the pager issues on its copy
// of the target's uffd. Each throws em::Error with errno on failure, except the
// outcomes the pager must branch on (EEXIST: already mapped), which are returned.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <linux/userfaultfd.h>

// Debian 12's headers stop at feature bit 12; the running kernel (6.18) has more.
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif

namespace em {

constexpr size_t kPageSize = 4096;

// UFFDIO_API with the features the pager needs; returns the features the kernel granted.
uint64_t uffd_api(int uffd, uint64_t wanted);
// Register [start, start+len) for MISSING (+ WP when wp) faults; returns the ioctls bitmask.
uint64_t uffd_register(int uffd, uint64_t start, uint64_t len, bool wp);
void uffd_unregister(int uffd, uint64_t start, uint64_t len);

// kAgain: the ioctl found the target's mm changing (EAGAIN) and the caller asked not to
// wait. The uffd's reader must ask that: the change may be a UFFD_EVENT_REMOVE waiting in
// the uffd, which only the reader can let finish (waiting would deadlock). Nothing was
// done past *copied; wake the faulting threads so they fault again later.
enum class CopyResult { kDone, kExists, kAgain };
enum class OnAgain { kWait, kReturn };
// UFFDIO_COPY of len bytes; retries EAGAIN (mm changing) with a short sleep. On
// EEXIST returns kExists with *copied = bytes copied before the existing page.
CopyResult uffd_copy(int uffd, uint64_t dst, const void* src, uint64_t len, bool wp, bool wake, uint64_t* copied,
                     OnAgain again = OnAgain::kWait);
CopyResult uffd_zeropage(int uffd, uint64_t dst, uint64_t len, bool wake, OnAgain again = OnAgain::kWait);
// Set (protect=true) or clear write protection; clearing also wakes waiting threads unless
// dontwake. Returns false only for EAGAIN with OnAgain::kReturn (nothing changed).
bool uffd_writeprotect(int uffd, uint64_t start, uint64_t len, bool protect, bool dontwake = false,
                       OnAgain again = OnAgain::kWait);
void uffd_wake(int uffd, uint64_t start, uint64_t len);
// read() of queued messages that never waits, whatever the uffd's O_NONBLOCK says
// (preadv2 with RWF_NOWAIT): -1 with errno EAGAIN when none is queued. Plain read()
// semantics otherwise (-1 and errno on failure).
ssize_t uffd_read_nowait(int uffd, void* buf, size_t len);
// Set or clear O_NONBLOCK on the uffd (shared with the target's copy); false with errno on failure.
bool uffd_set_nonblocking(int uffd, bool on);

}  // namespace em
