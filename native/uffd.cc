#include "uffd.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>

#include <cerrno>
#include <string>

#include "error.h"

namespace em {

namespace {
// EAGAIN means the target's mm is changing under us (mremap, fork, a pending event):
// the ioctl is safe to repeat once the change is done.
constexpr int kAgainRetries = 2000;
void brief_pause() {
  struct timespec ts = {0, 200 * 1000};
  nanosleep(&ts, nullptr);
}
std::string range_str(uint64_t start, uint64_t len) {
  char buf[64];
  snprintf(buf, sizeof buf, "0x%llx+%llu", (unsigned long long)start, (unsigned long long)len);
  return buf;
}
}  // namespace

uint64_t uffd_api(int uffd, uint64_t wanted) {
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = wanted;
  if (ioctl(uffd, UFFDIO_API, &api) != 0) throw_sys("UFFDIO_API", "enabling userfaultfd features");
  return api.features;
}

uint64_t uffd_register(int uffd, uint64_t start, uint64_t len, bool wp) {
  struct uffdio_register reg = {};
  reg.range.start = start;
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING | (wp ? UFFDIO_REGISTER_MODE_WP : 0);
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) throw_sys("UFFDIO_REGISTER", "registering guest RAM " + range_str(start, len));
  return reg.ioctls;
}

void uffd_unregister(int uffd, uint64_t start, uint64_t len) {
  struct uffdio_range r = {start, len};
  if (ioctl(uffd, UFFDIO_UNREGISTER, &r) != 0) throw_sys("UFFDIO_UNREGISTER", "unregistering " + range_str(start, len));
}

CopyResult uffd_copy(int uffd, uint64_t dst, const void* src, uint64_t len, bool wp, bool wake, uint64_t* copied,
                     OnAgain again) {
  uint64_t done = 0;
  for (int attempt = 0;; attempt++) {
    struct uffdio_copy c = {};
    c.dst = dst + done;
    c.src = reinterpret_cast<uint64_t>(src) + done;
    c.len = len - done;
    c.mode = (wp ? UFFDIO_COPY_MODE_WP : 0) | (wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE);
    int rc = ioctl(uffd, UFFDIO_COPY, &c);
    if (c.copy > 0) done += c.copy;
    if (rc == 0 && done >= len) break;
    if (rc == 0) continue;
    int err = errno;
    if (err == EEXIST) {
      if (copied) *copied = done;
      return CopyResult::kExists;
    }
    // A copy that stopped part-way also answers EAGAIN, with the bytes it did copy (a
    // later page of the range exists, a signal): go on from there, and the next call
    // says why (EEXIST) instead of reading as "the mm is changing".
    if (err == EAGAIN && c.copy > 0) continue;
    if (err == EAGAIN && again == OnAgain::kReturn) {
      if (copied) *copied = done;
      return CopyResult::kAgain;
    }
    if (err == EAGAIN && attempt < kAgainRetries) {
      brief_pause();
      continue;
    }
    throw_sys("UFFDIO_COPY", "resolving a fault at " + range_str(dst + done, len - done), err);
  }
  if (copied) *copied = done;
  return CopyResult::kDone;
}

CopyResult uffd_zeropage(int uffd, uint64_t dst, uint64_t len, bool wake, OnAgain again) {
  for (int attempt = 0;; attempt++) {
    struct uffdio_zeropage z = {};
    z.range.start = dst;
    z.range.len = len;
    z.mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE;
    if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0) return CopyResult::kDone;
    int err = errno;
    if (err == EEXIST) return CopyResult::kExists;
    if (err == EAGAIN && again == OnAgain::kReturn && z.zeropage <= 0) return CopyResult::kAgain;
    if (err == EAGAIN && attempt < kAgainRetries) {
      if (z.zeropage > 0) {  // partial progress: continue after it
        dst += z.zeropage;
        len -= z.zeropage;
        if (len == 0) return CopyResult::kDone;
      }
      brief_pause();
      continue;
    }
    throw_sys("UFFDIO_ZEROPAGE", "zero-filling " + range_str(dst, len), err);
  }
}

bool uffd_writeprotect(int uffd, uint64_t start, uint64_t len, bool protect, bool dontwake, OnAgain again) {
  for (int attempt = 0;; attempt++) {
    struct uffdio_writeprotect wp = {};
    wp.range.start = start;
    wp.range.len = len;
    // the kernel refuses DONTWAKE together with WP (nothing waits on a page being protected)
    wp.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : (dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) == 0) return true;
    int err = errno;
    if (err == EAGAIN && again == OnAgain::kReturn) return false;
    if (err == EAGAIN && attempt < kAgainRetries) {
      brief_pause();
      continue;
    }
    throw_sys("UFFDIO_WRITEPROTECT", std::string(protect ? "write-protecting " : "unprotecting ") + range_str(start, len), err);
  }
}

void uffd_wake(int uffd, uint64_t start, uint64_t len) {
  struct uffdio_range r = {start, len};
  if (ioctl(uffd, UFFDIO_WAKE, &r) != 0) throw_sys("UFFDIO_WAKE", "waking threads waiting on " + range_str(start, len));
}

bool uffd_set_nonblocking(int uffd, bool on) {
  int fl = fcntl(uffd, F_GETFL);
  return fl >= 0 && fcntl(uffd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) == 0;
}

ssize_t uffd_read_nowait(int uffd, void* buf, size_t len) {
  struct iovec v = {buf, len};
  return preadv2(uffd, &v, 1, -1, RWF_NOWAIT);  // offset -1: a plain read, as for any stream
}

}  // namespace em
