// Which thread of a target to borrow for an injection (see inject.h).
#include <dirent.h>
#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "error.h"
#include "inject.h"
#include "inject_internal.h"
#include "procfs.h"

namespace em {

using inject_detail::throw_gone;

// Threads of `pid` in the order to try borrowing them:
//   0  the main thread, when it is not blocked in a fault and not our child's leader
//   1  any other thread in ordinary sleep or running
//   2  threads waiting in a userfaultfd fault taken in user mode (PTRACE_INTERRUPT
//      takes them out of the wait; they fault again after detach)
//   3  the rest: waiting in a uffd fault inside a system call (the wait only ends when
//      the fault is served), uninterruptible sleep, stopped or traced
// The libuv caveat: when the target is the monitor's own child, libuv's SIGCHLD
// handler calls waitpid(child) and would swallow the main thread's ptrace stops.
std::vector<pid_t> thread_candidates(pid_t pid) {
  require_process(pid);
  std::vector<pid_t> tids;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  // Only a folder that is not there means the process is gone: a read that fails for
  // another reason (EMFILE, ENOMEM) must say so, not blame the target.
  DIR* d = opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT || errno == ESRCH) throw_gone(pid, "");
    throw_sys("opendir", "listing the threads of process " + std::to_string(pid) + " (" + dir + ")");
  }
  for (;;) {
    errno = 0;
    struct dirent* e = readdir(d);
    if (!e) break;
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') tids.push_back(std::atoi(e->d_name));
  }
  int read_err = errno;
  closedir(d);  // (read-only directory stream: nothing to lose)
  if (read_err != 0 && read_err != ENOENT && read_err != ESRCH)
    throw_sys("readdir", "listing the threads of process " + std::to_string(pid) + " (" + dir + ")", read_err);
  if (tids.empty()) throw_gone(pid, "");
  bool our_child = std::atoi(status_field(pid, "PPid").c_str()) == getpid();
  auto rank = [&](pid_t tid) {
    char state = 0;
    unsigned long flags = 0;
    if (!task_stat(pid, tid, &state, &flags)) return 4;
    if (state == 'D' || state == 'Z' || state == 'X' || state == 't' || state == 'T') return 3;
    std::string task = dir + "/" + std::to_string(tid);
    if (read_file(task + "/wchan").find("userfault") != std::string::npos) {
      // /proc/.../syscall: "-1 sp pc" when blocked outside a system call (user-mode fault).
      std::string sc = read_file(task + "/syscall");
      return sc.compare(0, 2, "-1") == 0 ? 2 : 3;
    }
    if (tid == pid) return our_child ? 3 : 0;
    return 1;
  };
  std::vector<std::pair<int, pid_t>> ranked;
  for (pid_t t : tids) ranked.push_back({rank(t) * 2 + (t == pid ? 0 : 1), t});
  std::sort(ranked.begin(), ranked.end());
  std::vector<pid_t> out;
  for (const auto& r : ranked)
    if (r.first < 8) out.push_back(r.second);
  if (out.empty()) throw_gone(pid, "");
  return out;
}

pid_t pick_thread(pid_t pid) { return thread_candidates(pid).front(); }

namespace {
constexpr unsigned long kPF_EXITING = 0x00000004;  // include/linux/sched.h

// Thread `tid` of `pid` has exited, or is exiting.
bool thread_ended(pid_t pid, pid_t tid) {
  char state = 0;
  unsigned long flags = 0;
  if (!task_stat(pid, tid, &state, &flags)) return errno == ENOENT || errno == ESRCH;
  return state == 'Z' || state == 'X' || (flags & kPF_EXITING) != 0;
}

// The process is there and not a zombie (a thread of it may have exited): what
// require_process checks, as a yes or no (a /proc read that fails otherwise is a yes).
bool process_alive(pid_t pid) {
  try {
    require_process(pid);
    return true;
  } catch (const Error& e) {
    return e.err() != ESRCH;
  }
}
}  // namespace

std::unique_ptr<RemoteTask> borrow_thread(pid_t pid, int timeout_ms) {
  // Fast path, the common case: the main thread is fine; ranking every thread of a
  // QEMU (dozens) reads three /proc files each.
  require_process(pid);
  std::string leader = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid);
  char state = 0;
  unsigned long flags = 0;
  long parent = 0;
  bool leader_ok = task_stat(pid, pid, &state, &flags, &parent) && (state == 'S' || state == 'R') &&
                   read_file(leader + "/wchan").find("userfault") == std::string::npos && parent != getpid();
  std::unique_ptr<Error> leader_error;  // why the main thread did not stop, if it was tried
  if (leader_ok) {
    try {
      return std::make_unique<RemoteTask>(pid, timeout_ms);
    } catch (const Error& e) {
      if (e.err() != ETIMEDOUT) throw;
      leader_error = std::make_unique<Error>(e);
    }
  }
  std::vector<pid_t> cands = thread_candidates(pid);
  if (leader_ok) cands.erase(std::remove(cands.begin(), cands.end(), pid), cands.end());
  if (cands.empty()) {
    if (leader_error) throw *leader_error;  // the only thread: its own reason says most
    throw Error("EM_PTRACE", "no thread of process " + std::to_string(pid) + " could be stopped", ETIMEDOUT);
  }
  // A thread that does not stop costs timeout_ms: try a few, best first. One that exited
  // since the listing (a pool worker's idle end) costs nothing: go on to the next, as
  // long as the process itself is there.
  const size_t max_timeouts = 3;
  size_t timeouts = 0;
  for (size_t i = 0;; i++) {
    try {
      return std::make_unique<RemoteTask>(cands[i], timeout_ms);
    } catch (const Error& e) {
      // (a thread in its exit refuses PTRACE_SEIZE with EPERM, one gone answers ESRCH)
      bool thread_gone = (e.err() == ESRCH || e.err() == EPERM) && cands[i] != pid && thread_ended(pid, cands[i]) &&
                         process_alive(pid);
      if (thread_gone && i + 1 < cands.size()) continue;
      if (thread_gone)
        throw Error("EM_PTRACE",
                    "no thread of process " + std::to_string(pid) + " could be stopped: the candidates exited meanwhile",
                    ETIMEDOUT);
      if (e.err() != ETIMEDOUT || ++timeouts >= max_timeouts || i + 1 >= cands.size()) throw;
    }
  }
}

}  // namespace em
