// Attach half of the data plane: a userfaultfd for the target's mm, created inside
// the target and copied out; finding one a dead monitor left behind; dropping the
// target's private pages from inside it. See attach.h for the contract and
// inject.h for how system calls run inside the target.
#include "attach.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "error.h"
#include "inject.h"
#include "napi_util.h"
#include "procfs.h"

namespace em {

namespace {

constexpr const char* kUffdLink = "anon_inode:[userfaultfd]";
constexpr size_t kMaxIov = 1024;  // UIO_MAXIOV: process_madvise's limit per call

// A descriptor of the monitor, closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// Descriptors created inside the target for one operation: closed there (each close
// checked) by close_all(), or best-effort if an exception unwinds past them.
class RemoteFds {
 public:
  explicit RemoteFds(RemoteTask& t) : t_(t) {}
  ~RemoteFds() {
    for (int fd : fds_) {
      try {
        t_.syscall(SYS_close, fd);
      } catch (...) {
      }
    }
  }
  void add(int fd) { fds_.push_back(fd); }
  void close_all() {
    std::vector<int> fds;
    fds.swap(fds_);
    for (int fd : fds) t_.check("closing a helper descriptor", SYS_close, fd);
  }

 private:
  RemoteTask& t_;
  std::vector<int> fds_;
};

std::string pid_str(pid_t pid) { return std::to_string(pid); }

int open_pidfd(pid_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd >= 0) return fd;
  int e = errno;
  if (e == ESRCH) throw Error("EM_NO_PROCESS", "process " + pid_str(pid) + " does not exist (exited?)", e, "pidfd_open");
  if (e == EINVAL)
    throw Error("EM_BAD_ARG", "pid " + pid_str(pid) + " is a thread, not a process: pass the process id (Tgid)", e,
                "pidfd_open");
  throw_sys("pidfd_open", "opening a pidfd for process " + pid_str(pid), e);
}

// Copy descriptor `target_fd` of the process behind `pidfd` into the monitor (O_CLOEXEC).
int getfd(int pidfd, pid_t pid, int target_fd) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, target_fd, 0));
  if (fd >= 0) return fd;
  int e = errno;
  if (e == ESRCH) throw Error("EM_NO_PROCESS", "process " + pid_str(pid) + " exited", e, "pidfd_getfd");
  throw_sys("pidfd_getfd", "copying descriptor " + std::to_string(target_fd) + " of process " + pid_str(pid), e);
}

std::string readlink_str(const std::string& path) {
  char buf[256];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
  if (n < 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

bool is_uffd(int fd) { return readlink_str("/proc/self/fd/" + std::to_string(fd)) == kUffdLink; }

// The target's pid as the target sees it (last NSpid field): pidfd_open inside the
// target must name itself in its own pid namespace.
pid_t pid_in_own_namespace(pid_t pid) {
  std::istringstream in(status_field(pid, "NSpid"));  // "" (no such line): pid as it is
  long v = 0, last = pid;
  while (in >> v) last = v;
  return static_cast<pid_t>(last);
}

// The /dev/userfaultfd route for an unprivileged target: the permission check of
// /dev/userfaultfd happens at open, so the monitor (root) opens it and hands the open
// file to the target. A socketpair created inside the target (one end copied out with
// pidfd_getfd) carries it: no socket names, so no network or mount namespace matters.
// Returns the new uffd's number inside the target.
long uffd_via_dev(RemoteTask& task, int pidfd, pid_t pid) {
  Fd dev(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
  if (dev.get() < 0) throw_sys("open", "opening /dev/userfaultfd in the monitor");

  uint64_t sc = task.scratch(256);
  const uint64_t r_msg = sc, r_iov = sc + 64, r_byte = sc + 96, r_ctl = sc + 128;
  task.check("creating a socket pair to pass /dev/userfaultfd", SYS_socketpair, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
             static_cast<long>(sc));
  int sv[2] = {-1, -1};
  task.read(sc, sv, sizeof sv);
  RemoteFds helpers(task);
  helpers.add(sv[0]);
  helpers.add(sv[1]);

  {
    Fd end(getfd(pidfd, pid, sv[1]));
    char one = 'u';
    struct iovec iov = {&one, 1};
    union {
      char buf[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } u;
    std::memset(&u, 0, sizeof u);
    struct msghdr m {};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    struct cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    int d = dev.get();
    std::memcpy(CMSG_DATA(cm), &d, sizeof d);
    ssize_t s = ::sendmsg(end.get(), &m, MSG_NOSIGNAL);
    if (s != 1) throw_sys("sendmsg", "passing /dev/userfaultfd to process " + pid_str(pid), s < 0 ? errno : EIO);
  }

  // recvmsg inside the target: msghdr, iovec, data byte and control buffer in scratch.
  const size_t ctl_len = CMSG_SPACE(sizeof(int));
  struct iovec riov = {reinterpret_cast<void*>(r_byte), 1};
  struct msghdr rm {};
  rm.msg_iov = reinterpret_cast<struct iovec*>(r_iov);
  rm.msg_iovlen = 1;
  rm.msg_control = reinterpret_cast<void*>(r_ctl);
  rm.msg_controllen = ctl_len;
  std::vector<char> zero(ctl_len, 0);
  task.write(r_iov, &riov, sizeof riov);
  task.write(r_ctl, zero.data(), zero.size());
  task.write(r_msg, &rm, sizeof rm);
  long got = task.check("receiving /dev/userfaultfd", SYS_recvmsg, sv[0], static_cast<long>(r_msg),
                        MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  struct msghdr back {};
  task.read(r_msg, &back, sizeof back);
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ru;
  task.read(r_ctl, ru.buf, sizeof ru.buf);
  struct cmsghdr* rc = reinterpret_cast<struct cmsghdr*>(ru.buf);
  if (got != 1 || (back.msg_flags & MSG_CTRUNC) || back.msg_controllen < CMSG_LEN(sizeof(int)) ||
      rc->cmsg_level != SOL_SOCKET || rc->cmsg_type != SCM_RIGHTS)
    throw Error("EM_INJECT", "process " + pid_str(pid) + " did not receive /dev/userfaultfd over SCM_RIGHTS", EPROTO,
                "recvmsg");
  int rdev = -1;
  std::memcpy(&rdev, CMSG_DATA(rc), sizeof rdev);
  helpers.add(rdev);

  long uffd = task.check("creating a userfaultfd with USERFAULTFD_IOC_NEW", SYS_ioctl, rdev,
                         static_cast<long>(USERFAULTFD_IOC_NEW), O_CLOEXEC | O_NONBLOCK);
  try {
    helpers.close_all();
  } catch (...) {
    try {
      task.syscall(SYS_close, uffd);
    } catch (...) {
    }
    throw;
  }
  return uffd;
}

struct UffdEntry {
  int fd;
  unsigned long long features;
};

std::vector<UffdEntry> list_target_uffds(pid_t pid) {
  std::vector<UffdEntry> out;
  std::string dir = "/proc/" + pid_str(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    int e = errno;
    if (e == ENOENT) throw Error("EM_NO_PROCESS", "process " + pid_str(pid) + " does not exist (exited?)", ESRCH);
    throw_sys("opendir", "listing the descriptors of process " + pid_str(pid), e);
  }
  while (struct dirent* de = ::readdir(d)) {
    if (de->d_name[0] < '0' || de->d_name[0] > '9') continue;
    if (readlink_str(dir + "/" + de->d_name) != kUffdLink) continue;
    UffdEntry u{std::atoi(de->d_name), 0};
    // fdinfo of a uffd: "API:\t<api>:<features>:<ioctls>"; features are set by UFFDIO_API.
    std::ifstream info("/proc/" + pid_str(pid) + "/fdinfo/" + de->d_name);
    std::string line;
    while (std::getline(info, line))
      if (line.compare(0, 4, "API:") == 0) {
        unsigned long long api = 0, feat = 0;
        if (sscanf(line.c_str() + 4, " %llx:%llx", &api, &feat) == 2) u.features = feat;
      }
    out.push_back(u);
  }
  ::closedir(d);
  return out;
}

}  // namespace

Acquired acquire_uffd(pid_t pid) {
  require_process(pid);
  Fd pidfd(open_pidfd(pid));
  std::unique_ptr<RemoteTask> task = borrow_thread(pid);

  Acquired a;
  long r = task->syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  std::string why_syscall, why_dev;
  if (r >= 0) {
    a.target_fd = static_cast<int>(r);
    a.route = "syscall";
  } else {
    why_syscall = std::string("userfaultfd() inside the target: ") + std::strerror(static_cast<int>(-r));
    try {
      a.target_fd = static_cast<int>(uffd_via_dev(*task, pidfd.get(), pid));
      a.route = "dev-userfaultfd";
    } catch (const Error& e) {
      // The injection machinery itself failing is not a missing uffd: report it as is.
      if (e.code() == "EM_NO_PROCESS" || e.code() == "EM_PTRACE") throw;
      why_dev = std::string("/dev/userfaultfd route: ") + e.what();
    }
  }
  if (a.target_fd < 0)
    throw Error("EM_NO_UFFD",
                "cannot create a userfaultfd inside process " + pid_str(pid) + " (" + why_syscall + "; " + why_dev +
                    "); allow it with: sysctl -w vm.unprivileged_userfaultfd=1",
                static_cast<int>(-r), "userfaultfd");

  // The monitor's copy. Until it exists, the uffd in the target is unused: on failure
  // close it there, so nothing is left behind.
  try {
    a.fd = getfd(pidfd.get(), pid, a.target_fd);
    if (!is_uffd(a.fd)) {
      ::close(a.fd);
      a.fd = -1;
      throw Error("EM_INTERNAL", "descriptor " + std::to_string(a.target_fd) + " copied from process " + pid_str(pid) +
                                     " is not a userfaultfd",
                  EBADF);
    }
  } catch (...) {
    try {
      task->syscall(SYS_close, a.target_fd);
    } catch (...) {
    }
    throw;
  }
  return a;  // ~RemoteTask restores the borrowed thread
}

bool find_target_uffd(pid_t pid, Acquired* out) {
  require_process(pid);
  std::vector<UffdEntry> found = list_target_uffds(pid);
  if (found.empty()) return false;
  // A uffd that went through UFFDIO_API is the one a monitor was serving.
  std::sort(found.begin(), found.end(), [](const UffdEntry& x, const UffdEntry& y) {
    if ((x.features != 0) != (y.features != 0)) return x.features != 0;
    return x.fd < y.fd;
  });
  Fd pidfd(open_pidfd(pid));
  out->fd = getfd(pidfd.get(), pid, found[0].fd);
  out->target_fd = found[0].fd;
  out->route = "existing";
  return true;
}

namespace {

// include/uapi/linux/pidfd.h (Linux 6.14): the calling process, wherever a pidfd goes.
constexpr long kPidfdSelfThreadGroup = -10001;
std::atomic<bool> g_no_pidfd_self{false};  // this kernel refused it (EBADF)

// Ranges that touch merged into one (empty ones left out): one range is one page-table
// walk and one TLB flush in the target for MADV_DONTNEED, one gather for vmsplice.
std::vector<struct iovec> merge_touching(const struct iovec* iov, size_t n) {
  std::vector<struct iovec> merged;
  merged.reserve(n);
  for (size_t i = 0; i < n; i++) {
    if (iov[i].iov_len == 0) continue;
    if (!merged.empty() &&
        static_cast<char*>(merged.back().iov_base) + merged.back().iov_len == static_cast<char*>(iov[i].iov_base))
      merged.back().iov_len += iov[i].iov_len;
    else
      merged.push_back(iov[i]);
  }
  return merged;
}

// Skip `done` bytes of v[first..] (a call that stopped part-way), moving `first` past
// the ranges that are finished.
void advance(std::vector<struct iovec>& v, size_t& first, size_t done) {
  while (done > 0 && first < v.size()) {
    size_t take = std::min(done, v[first].iov_len);
    v[first].iov_base = static_cast<char*>(v[first].iov_base) + take;
    v[first].iov_len -= take;
    done -= take;
    if (v[first].iov_len == 0) first++;
  }
  while (first < v.size() && v[first].iov_len == 0) first++;
}

}  // namespace

void remote_madvise_dontneed(pid_t pid, const struct iovec* iov, size_t n, RemoteTask* borrowed) {
  if (n == 0) return;
  for (size_t i = 0; i < n; i++)
    if (reinterpret_cast<uintptr_t>(iov[i].iov_base) % 4096 != 0)
      throw Error("EM_BAD_ARG", "range " + std::to_string(i) + " does not start on a page boundary", EINVAL);
  // (no require_process here: borrow_thread checks the process, and a borrowed thread
  // is stopped, so its process lives)
  // Merge touching ranges: one range is one page-table walk and one TLB flush in the
  // target, instead of one per page (a flush interrupts every CPU the target runs on).
  std::vector<struct iovec> merged = merge_touching(iov, n);
  if (merged.empty()) return;
  iov = merged.data();
  n = merged.size();
  std::unique_ptr<RemoteTask> own = borrowed ? nullptr : borrow_thread(pid);
  RemoteTask* task = borrowed ? borrowed : own.get();
  // The target names itself by PIDFD_SELF_THREAD_GROUP where the kernel knows it (6.14
  // on): two injected syscalls fewer than opening and closing a pidfd of itself, which
  // older kernels need (they answer EBADF, remembered for the rest of this process).
  long pfd = kPidfdSelfThreadGroup;
  auto open_own_pidfd = [&] {
    pfd = task->check("opening a pidfd of the target inside itself", SYS_pidfd_open, pid_in_own_namespace(pid), 0);
  };
  if (g_no_pidfd_self.load(std::memory_order_relaxed)) open_own_pidfd();
  try {
    uint64_t sc = task->scratch(kMaxIov * sizeof(struct iovec));
    for (size_t i = 0; i < n; i += kMaxIov) {
      size_t cnt = std::min(kMaxIov, n - i);
      std::vector<struct iovec> batch(iov + i, iov + i + cnt);
      size_t left = 0;
      for (const auto& v : batch) left += v.iov_len;
      size_t first = 0;  // batch[first..] still to do
      while (left > 0) {
        task->write(sc, batch.data() + first, (batch.size() - first) * sizeof(struct iovec));
        long done = 0;
        try {
          done = task->check("dropping pages with MADV_DONTNEED", SYS_process_madvise, pfd, static_cast<long>(sc),
                             static_cast<long>(batch.size() - first), MADV_DONTNEED, 0);
        } catch (const Error& e) {
          if (pfd != kPidfdSelfThreadGroup || e.err() != EBADF) throw;
          g_no_pidfd_self.store(true, std::memory_order_relaxed);
          open_own_pidfd();
          continue;
        }
        if (done <= 0)
          throw Error("EM_INJECT", "process_madvise inside process " + pid_str(pid) + " made no progress", EIO,
                      "process_madvise");
        // The kernel stops at the first failing range and reports the bytes before it:
        // skip what was done and call again, so the failing range reports its errno.
        left -= std::min(static_cast<size_t>(done), left);
        advance(batch, first, static_cast<size_t>(done));
      }
    }
  } catch (...) {
    try {
      if (pfd != kPidfdSelfThreadGroup) task->syscall(SYS_close, pfd);
    } catch (...) {
    }
    throw;
  }
  if (pfd != kPidfdSelfThreadGroup) task->check("closing the target's pidfd of itself", SYS_close, pfd);
}

TargetPipe open_target_pipe(pid_t pid) {
  require_process(pid);
  Fd pidfd(open_pidfd(pid));
  std::unique_ptr<RemoteTask> task = borrow_thread(pid);
  uint64_t sc = task->scratch(2 * sizeof(int));
  task->check("creating the eviction pipe inside the target", SYS_pipe2, static_cast<long>(sc), O_CLOEXEC);
  int fds[2];
  task->read(sc, fds, sizeof fds);
  TargetPipe p;
  try {
    p.read_fd = getfd(pidfd.get(), pid, fds[0]);
  } catch (...) {
    try {
      task->syscall(SYS_close, fds[0]);
      task->syscall(SYS_close, fds[1]);
    } catch (...) {
    }
    throw;
  }
  p.target_write_fd = fds[1];
  long rc = task->syscall(SYS_close, fds[0]);  // the target only writes
  if (rc < 0) {
    ::close(p.read_fd);
    try {
      task->syscall(SYS_close, fds[1]);
    } catch (...) {
    }
    throw Error("EM_INJECT", "closing the read end of the eviction pipe inside process " + pid_str(pid) + " failed",
                static_cast<int>(-rc), "close");
  }
  return p;
}

void close_target_fd(pid_t pid, int target_fd) {
  std::unique_ptr<RemoteTask> task = borrow_thread(pid);
  task->check("closing a descriptor elasticmem opened inside the target", SYS_close, target_fd);
}

size_t remote_vmsplice(pid_t pid, int target_fd, const struct iovec* iov, size_t n, size_t* done_out, RemoteTask* borrowed) {
  *done_out = 0;
  if (n == 0) return 0;
  // (no require_process: as in remote_madvise_dontneed, borrow_thread checks the process,
  // and a borrowed thread is stopped, so its process lives; the pager borrows one)
  std::vector<struct iovec> merged = merge_touching(iov, n);  // one call gathers touching ranges as one
  std::unique_ptr<RemoteTask> own = borrowed ? nullptr : borrow_thread(pid);
  RemoteTask* task = borrowed ? borrowed : own.get();
  uint64_t sc = task->scratch(kMaxIov * sizeof(struct iovec));
  size_t first = 0;
  while (first < merged.size()) {
    size_t cnt = std::min(kMaxIov, merged.size() - first);
    task->write(sc, merged.data() + first, cnt * sizeof(struct iovec));
    // SPLICE_F_NONBLOCK: a pipe that is full fails (EAGAIN) instead of holding the
    // target's thread; the caller sizes the pipe for its batch.
    long got = task->check("passing evicted pages to the eviction pipe with vmsplice", SYS_vmsplice, target_fd,
                           static_cast<long>(sc), static_cast<long>(cnt), SPLICE_F_NONBLOCK);
    if (got <= 0)
      throw Error("EM_INJECT", "vmsplice inside process " + pid_str(pid) + " made no progress", EIO, "vmsplice");
    *done_out += static_cast<size_t>(got);
    advance(merged, first, static_cast<size_t>(got));
  }
  return *done_out;
}

// ---- N-API ----

namespace {

pid_t ArgPid(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Error("EM_BAD_ARG", "pid must be a positive integer", EINVAL);
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 1 && v <= INT_MAX) || v != static_cast<double>(static_cast<int64_t>(v)))
    throw Error("EM_BAD_ARG", "pid must be a positive integer, got " + info[i].ToString().Utf8Value(), EINVAL);
  return static_cast<pid_t>(v);
}

// An address as a number or a decimal/0x string (64-bit addresses exceed 2^53).
uint64_t ArgAddr(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() > i && info[i].IsNumber()) return static_cast<uint64_t>(info[i].As<Napi::Number>().Int64Value());
  if (info.Length() > i && info[i].IsString()) {
    std::string s = info[i].As<Napi::String>().Utf8Value();
    char* end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(s.c_str(), &end, 0);
    if (!s.empty() && end && *end == 0 && errno == 0) return v;
  }
  throw Error("EM_BAD_ARG", std::string("argument '") + name + "' must be an address (number or \"0x...\" string)",
              EINVAL);
}

Napi::Object ToJs(Napi::Env env, const Acquired& a) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", a.fd);
  o.Set("targetFd", a.target_fd);
  o.Set("route", a.route);
  return o;
}

Napi::Value AcquireUffd(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value { return ToJs(info.Env(), acquire_uffd(ArgPid(info, 0))); });
}

Napi::Value FindTargetUffd(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    Acquired a;
    if (!find_target_uffd(ArgPid(info, 0), &a)) return info.Env().Null();
    return ToJs(info.Env(), a);
  });
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    int64_t fd = ArgInt(info, 0, "fd");
    if (fd < 3 || fd > INT_MAX)
      throw Error("EM_BAD_ARG", "closeFd: " + std::to_string(fd) + " is not a descriptor elasticmem handed out", EBADF);
    if (::close(static_cast<int>(fd)) != 0) throw_sys("close", "closing descriptor " + std::to_string(fd));
    return info.Env().Undefined();
  });
}

// TEST ONLY: remote_madvise_dontneed of one page every `stridePages` pages of
// [start, start+length) (stride 1: the whole range, merged into one; stride 2: every
// other page, so many separate ranges exercise the batching); `ownPidfd`: through a
// pidfd the target opens of itself, as on kernels without PIDFD_SELF. The pager calls
// the C++ function directly.
Napi::Value TestMadviseDontneed(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    pid_t pid = ArgPid(info, 0);
    uint64_t start = ArgAddr(info, 1, "start");
    int64_t length = ArgInt(info, 2, "length");
    int64_t stride = info.Length() > 3 && !info[3].IsUndefined() ? ArgInt(info, 3, "stridePages") : 1;
    if (length <= 0 || length % 4096 != 0)
      throw Error("EM_BAD_ARG", "length must be a positive multiple of 4096", EINVAL);
    if (stride < 1) throw Error("EM_BAD_ARG", "stridePages must be at least 1", EINVAL);
    std::vector<struct iovec> iov;
    for (int64_t p = 0; p < length / 4096; p += stride)
      iov.push_back({reinterpret_cast<void*>(start + static_cast<uint64_t>(p) * 4096), 4096});
    struct Route {  // ownPidfd for this call only
      bool prev = g_no_pidfd_self.load();
      explicit Route(bool own) { if (own) g_no_pidfd_self = true; }
      ~Route() { g_no_pidfd_self = prev; }
    } route(info.Length() > 4 && info[4].ToBoolean());
    remote_madvise_dontneed(pid, iov.data(), iov.size());
    return info.Env().Undefined();
  });
}

}  // namespace

void RegisterAttach(Napi::Env env, Napi::Object exports) {
  exports.Set("acquireUffd", Napi::Function::New(env, AcquireUffd));
  exports.Set("findTargetUffd", Napi::Function::New(env, FindTargetUffd));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
  exports.Set("_testMadviseDontneed", Napi::Function::New(env, TestMadviseDontneed));
}

}  // namespace em
