// ptrace syscall injection: see inject.h for the why. x86-64 only.
#include "inject.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "error.h"

#if !defined(__x86_64__)
#error "elasticmem's syscall injection is written for x86-64"
#endif

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

namespace em {

namespace {

// Kernel-internal restart codes, visible in rax of a thread stopped inside a syscall.
constexpr long kERESTARTSYS = 512;
constexpr long kERESTARTNOINTR = 513;
constexpr long kERESTARTNOHAND = 514;
constexpr long kERESTART_RESTARTBLOCK = 516;
constexpr unsigned kPF_KTHREAD = 0x00200000;

using Clock = std::chrono::steady_clock;

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return "";
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Field of /proc/PID/status ("TracerPid", "Tgid", "PPid", "NSpid"); "" if absent.
std::string status_field(pid_t pid, const char* key) {
  std::string s = read_file("/proc/" + std::to_string(pid) + "/status");
  std::string k = std::string("\n") + key + ":";
  size_t at = s.find(k);
  if (at == std::string::npos) {
    if (s.compare(0, k.size() - 1, k.c_str() + 1) != 0) return "";
    at = 0;
  } else {
    at += 1;
  }
  size_t v = s.find(':', at) + 1;
  size_t e = s.find('\n', v);
  std::string val = s.substr(v, e == std::string::npos ? std::string::npos : e - v);
  size_t b = val.find_first_not_of(" \t");
  return b == std::string::npos ? "" : val.substr(b);
}

// State letter and flags of /proc/PID/task/TID/stat (comm may contain spaces: parse after the last ')').
bool task_stat(pid_t pid, pid_t tid, char* state, unsigned long* flags) {
  std::string s = read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat");
  size_t rp = s.rfind(')');
  if (rp == std::string::npos) return false;
  std::istringstream in(s.substr(rp + 2));
  std::string st;
  long ppid, pgrp, session, tty, tpgid;
  unsigned long fl = 0;
  in >> st >> ppid >> pgrp >> session >> tty >> tpgid >> fl;
  if (!in || st.empty()) return false;
  *state = st[0];
  *flags = fl;
  return true;
}

std::string comm_of(pid_t pid) {
  std::string c = read_file("/proc/" + std::to_string(pid) + "/comm");
  while (!c.empty() && c.back() == '\n') c.pop_back();
  return c;
}

[[noreturn]] void throw_gone(pid_t pid, const std::string& what) {
  throw Error("EM_NO_PROCESS", "process " + std::to_string(pid) + " does not exist (exited?) " + what, ESRCH);
}

[[noreturn]] void throw_ptrace(const std::string& msg, int err, const char* call) {
  throw Error("EM_PTRACE", msg + ": " + call + " failed: " + std::strerror(err) + " (errno " + std::to_string(err) + ")",
              err, call);
}

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return std::string("was killed by ") + strsignal(WTERMSIG(st));
  return "changed state (" + std::to_string(st) + ")";
}

// Wait for the traced thread to stop, without ever blocking forever: poll waitpid
// with __WALL|WNOHANG, spinning briefly first (a single-step completes in
// microseconds) and then sleeping with backoff. Returns false on timeout. Throws
// EM_NO_PROCESS when the thread exited instead.
bool wait_stop(pid_t pid, pid_t tid, int timeout_ms, int* status) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (unsigned i = 0;; i++) {
    int st = 0;
    pid_t r = waitpid(tid, &st, __WALL | WNOHANG);
    if (r == tid) {
      if (WIFSTOPPED(st)) {
        *status = st;
        return true;
      }
      throw Error("EM_NO_PROCESS", "thread " + std::to_string(tid) + " of process " + std::to_string(pid) + " " +
                                       describe_status(st) + " during syscall injection",
                  ESRCH);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) throw_gone(pid, "(its thread " + std::to_string(tid) + " vanished during syscall injection)");
      throw_ptrace("waiting for thread " + std::to_string(tid) + " to stop", errno, "waitpid");
    }
    if (Clock::now() >= deadline) return false;
    if (i < 64) {
      sched_yield();
    } else {
      unsigned us = i < 200 ? 20 : 1000;
      usleep(us);
    }
  }
}

// The address of a `syscall` instruction (0f 05) in an executable mapping of the
// target: libc first, then the vdso, then anything executable. Cached per process
// (keyed by pid and start time, so a reused pid is rescanned) and re-checked each use.
struct GadgetKey {
  pid_t pid;
  unsigned long long start_time;
  bool operator<(const GadgetKey& o) const { return pid != o.pid ? pid < o.pid : start_time < o.start_time; }
};
std::mutex g_gadget_mu;
std::map<GadgetKey, uint64_t> g_gadgets;

unsigned long long start_time_of(pid_t pid) {
  std::string s = read_file("/proc/" + std::to_string(pid) + "/stat");
  size_t rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream in(s.substr(rp + 2));
  std::string tok;
  // fields after comm: state(3) ... starttime is field 22 -> 20th token after ')'
  for (int i = 0; i < 20 && (in >> tok); i++) {
  }
  return std::strtoull(tok.c_str(), nullptr, 10);
}

bool has_syscall_at(pid_t pid, uint64_t addr) {
  unsigned char b[2] = {0, 0};
  struct iovec l = {b, 2}, r = {reinterpret_cast<void*>(addr), 2};
  if (process_vm_readv(pid, &l, 1, &r, 1, 0) == 2) return b[0] == 0x0f && b[1] == 0x05;
  // process_vm_readv refuses mappings without read permission (execute-only text): use /proc/PID/mem.
  int fd = open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = pread(fd, b, 2, static_cast<off_t>(addr)) == 2 && b[0] == 0x0f && b[1] == 0x05;
  close(fd);
  return ok;
}

uint64_t scan_gadget(pid_t pid) {
  std::string maps_path = "/proc/" + std::to_string(pid) + "/maps";
  if (access(maps_path.c_str(), R_OK) != 0) {
    int e = errno;
    if (e == ENOENT || e == ESRCH) throw_gone(pid, "");
    throw_ptrace("not permitted to read the memory map of process " + std::to_string(pid) + " (" + comm_of(pid) + ")", e,
                 "open(/proc/PID/maps)");
  }
  std::ifstream maps(maps_path);
  if (!maps) throw_gone(pid, "(cannot read its /proc/PID/maps)");
  struct Exec {
    uint64_t lo, hi;
    int rank;
  };
  std::vector<Exec> ex;
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long lo, hi;
    char perm[8] = {0};
    if (sscanf(line.c_str(), "%lx-%lx %7s", &lo, &hi, perm) != 3 || perm[2] != 'x') continue;
    int rank = line.find("libc") != std::string::npos ? 0 : line.find("[vdso]") != std::string::npos ? 1 : 2;
    if (line.find("[vsyscall]") != std::string::npos) continue;  // emulated, not executable code
    ex.push_back({lo, hi, rank});
  }
  int mem = open(("/proc/" + std::to_string(pid) + "/mem").c_str(), O_RDONLY | O_CLOEXEC);
  if (mem < 0) {
    if (errno == ENOENT || errno == ESRCH) throw_gone(pid, "(cannot open its /proc/PID/mem)");
    throw_ptrace("reading the code of process " + std::to_string(pid), errno, "open");
  }
  // Prefer `syscall; ret` (0f 05 c3): should a single-step ever run one instruction
  // past the syscall, that instruction only reads the stack.
  std::vector<unsigned char> buf;
  for (int with_ret = 1; with_ret >= 0; with_ret--) {
    for (int rank = 0; rank < 3; rank++) {
      for (const Exec& e : ex) {
        if (e.rank != rank) continue;
        for (uint64_t off = e.lo; off < e.hi;) {
          size_t n = std::min<uint64_t>(e.hi - off, 1 << 20);
          buf.resize(n);
          ssize_t r = pread(mem, buf.data(), n, static_cast<off_t>(off));
          if (r < 3) break;
          for (ssize_t i = 0; i + 2 < r; i++)
            if (buf[i] == 0x0f && buf[i + 1] == 0x05 && (!with_ret || buf[i + 2] == 0xc3)) {
              close(mem);
              return off + static_cast<uint64_t>(i);
            }
          off += static_cast<uint64_t>(r) - 2;  // keep two bytes of overlap across chunks
        }
      }
    }
  }
  close(mem);
  throw Error("EM_PTRACE",
              "no `syscall` instruction found in any executable mapping of process " + std::to_string(pid) +
                  " (statically linked without one?); cannot inject system calls",
              ENOEXEC);
}

uint64_t find_gadget(pid_t pid) {
  GadgetKey key{pid, start_time_of(pid)};
  {
    std::lock_guard<std::mutex> lk(g_gadget_mu);
    auto it = g_gadgets.find(key);
    if (it != g_gadgets.end() && has_syscall_at(pid, it->second)) return it->second;
  }
  uint64_t g = scan_gadget(pid);
  std::lock_guard<std::mutex> lk(g_gadget_mu);
  for (auto it = g_gadgets.begin(); it != g_gadgets.end();)
    it = (it->first.pid == pid) ? g_gadgets.erase(it) : std::next(it);
  g_gadgets[key] = g;
  return g;
}

// A private thread that issues every ptrace request of one RemoteTask (ptrace
// requests must come from the thread that seized the tracee).
class Tracer {
 public:
  Tracer() : th_([this] { loop(); }) {}
  ~Tracer() { stop(); }
  void run(const std::function<void()>& fn) {
    std::unique_lock<std::mutex> lk(mu_);
    job_ = &fn;
    err_ = nullptr;
    cv_.notify_all();
    cv_.wait(lk, [this] { return job_ == nullptr; });
    if (err_) std::rethrow_exception(err_);
  }
  // Hand the remaining work to the tracer thread and let it finish on its own.
  void run_detached(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      final_ = std::move(fn);
      quit_ = true;
      cv_.notify_all();
    }
    th_.detach();
  }
  void stop() {
    if (!th_.joinable()) return;
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
      cv_.notify_all();
    }
    th_.join();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return job_ != nullptr || quit_; });
      if (job_) {
        try {
          (*job_)();
        } catch (...) {
          err_ = std::current_exception();
        }
        job_ = nullptr;
        cv_.notify_all();
        continue;
      }
      if (quit_) break;
    }
    std::function<void()> fin = std::move(final_);
    lk.unlock();
    if (fin) fin();
    // Returning ends the tracer thread: the kernel detaches anything still traced.
  }
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void()>* job_ = nullptr;
  std::exception_ptr err_;
  std::function<void()> final_;
  bool quit_ = false;
  std::thread th_;  // last: starts after the members above exist
};

}  // namespace

std::string syscall_name(long nr) {
  switch (nr) {
    case SYS_userfaultfd: return "userfaultfd";
    case SYS_ioctl: return "ioctl";
    case SYS_close: return "close";
    case SYS_socketpair: return "socketpair";
    case SYS_recvmsg: return "recvmsg";
    case SYS_mmap: return "mmap";
    case SYS_munmap: return "munmap";
    case SYS_pidfd_open: return "pidfd_open";
    case SYS_process_madvise: return "process_madvise";
    case SYS_getpid: return "getpid";
    case SYS_gettid: return "gettid";
    case SYS_madvise: return "madvise";
    case SYS_pause: return "pause";
    default: return "syscall " + std::to_string(nr);
  }
}

void require_process(pid_t pid) {
  if (pid <= 0) throw Error("EM_BAD_ARG", "pid must be a positive integer, got " + std::to_string(pid), EINVAL);
  if (kill(pid, 0) != 0 && errno == ESRCH) throw_gone(pid, "");
  char state = 0;
  unsigned long flags = 0;
  if (!task_stat(pid, pid, &state, &flags)) throw_gone(pid, "");
  if (state == 'Z' || state == 'X') throw_gone(pid, "(it is a zombie)");
  std::string tgid = status_field(pid, "Tgid");
  if (!tgid.empty() && std::atoi(tgid.c_str()) != pid)
    throw Error("EM_BAD_ARG", "pid " + std::to_string(pid) + " is a thread of process " + tgid +
                                  ", not a process: pass the process id",
                EINVAL);
}

// One injection session per target process at a time, within this monitor: a second
// PTRACE_SEIZE of a thread we already hold would fail as "already traced", and two
// sessions on different threads would stop the target twice. A busy flag rather than
// a mutex, because a session may end on another thread than it started on.
class PidGate {
 public:
  static std::shared_ptr<PidGate> of(pid_t pid) {
    static std::mutex mu;
    static std::map<pid_t, std::weak_ptr<PidGate>> gates;
    std::lock_guard<std::mutex> lk(mu);
    std::shared_ptr<PidGate> g = gates[pid].lock();
    if (!g) {
      g = std::make_shared<PidGate>();
      gates[pid] = g;
    }
    for (auto it = gates.begin(); it != gates.end();) it = it->second.expired() ? gates.erase(it) : std::next(it);
    return g;
  }
  bool enter(int timeout_ms) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [this] { return !busy_; })) return false;
    busy_ = true;
    return true;
  }
  void leave() {
    std::lock_guard<std::mutex> lk(mu_);
    busy_ = false;
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false;
};

struct RemoteTask::Impl {
  ~Impl() {
    if (gate) gate->leave();
  }
  std::shared_ptr<PidGate> gate;  // held (entered) for the whole session
  pid_t tid = 0, pid = 0;
  int timeout_ms = kInjectTimeoutMs;
  struct user_regs_struct saved {};
  uint64_t gadget = 0;
  bool stopped = false;    // tracee is in a ptrace stop right now
  bool regs_dirty = false; // tracee's registers are not the saved ones
  bool broken = false;     // an injection failed midway: refuse further calls
  bool trap_queued = false; // a single-step SIGTRAP may still be queued (injection cut short)
  std::vector<int> signals;  // signals that arrived while we held the thread, to re-deliver
  uint64_t map_addr = 0;   // injected scratch mapping (when the stack has no room)
  size_t map_len = 0;
  Tracer tracer;

  void seize();
  long inject(long nr, const long a[6]);
  void restore_and_detach();
  bool interrupt_and_wait();
  void note_signal_stop(int st);
  void consume_step_trap();
};

// True if SIGTRAP is pending for the thread itself (SigPnd of /proc/PID/task/TID/status).
static bool sigtrap_pending(pid_t pid, pid_t tid) {
  std::string s = read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/status");
  size_t at = s.find("\nSigPnd:");
  if (at == std::string::npos) return false;
  unsigned long long mask = std::strtoull(s.c_str() + at + 8, nullptr, 16);
  return mask & (1ULL << (SIGTRAP - 1));
}

// An injected syscall that was interrupted (timeout) returns through the kernel's
// single-step report, which queues a SIGTRAP for the thread. Left there, it would be
// delivered after detach and kill the target. Resuming a stopped thread dequeues
// pending signals before any instruction runs, so step once to take it off the queue.
void RemoteTask::Impl::consume_step_trap() {
  for (int i = 0; i < 8 && sigtrap_pending(pid, tid); i++) {
    if (ptrace(PTRACE_SINGLESTEP, tid, nullptr, nullptr) != 0) return;
    stopped = false;
    int st = 0;
    if (!wait_stop(pid, tid, timeout_ms, &st)) return;
    stopped = true;
    if (WSTOPSIG(st) == SIGTRAP && (st >> 16) == 0) {
      siginfo_t si {};
      if (ptrace(PTRACE_GETSIGINFO, tid, nullptr, &si) == 0 && si.si_code <= 0) signals.push_back(SIGTRAP);
    } else {
      note_signal_stop(st);
    }
  }
  trap_queued = false;
}

void RemoteTask::Impl::note_signal_stop(int st) {
  int sig = WSTOPSIG(st);
  int event = st >> 16;
  // Event stops (PTRACE_INTERRUPT, group-stop under SEIZE) carry no signal to re-deliver:
  // the kernel re-enters a pending group stop by itself on detach.
  if (event != 0) return;
  signals.push_back(sig);
}

void RemoteTask::Impl::seize() {
  std::string who = "thread " + std::to_string(tid) + " of process " + std::to_string(pid) + " (" + comm_of(pid) + ")";
  if (ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
    int e = errno;
    if (e == ESRCH) throw_gone(pid, "");
    if (e == EPERM) {
      std::string tracer = status_field(tid, "TracerPid");
      if (!tracer.empty() && tracer != "0")
        throw_ptrace(who + " is already traced by process " + tracer + " (" + comm_of(std::atoi(tracer.c_str())) +
                         "): a debugger or another elasticmem monitor is attached; detach it first",
                     e, "PTRACE_SEIZE");
      throw_ptrace("not permitted to trace " + who + " (run the monitor as root with CAP_SYS_PTRACE)", e,
                   "PTRACE_SEIZE");
    }
    throw_ptrace("cannot trace " + who, e, "PTRACE_SEIZE");
  }
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0) {
    int e = errno;
    if (e == ESRCH) throw_gone(pid, "");
    throw_ptrace("cannot stop " + who, e, "PTRACE_INTERRUPT");
  }
  int st = 0;
  if (!wait_stop(pid, tid, timeout_ms, &st))
    throw Error("EM_PTRACE",
                who + " did not stop within " + std::to_string(timeout_ms) +
                    " ms (blocked in uninterruptible sleep or an unresolved userfaultfd fault?)",
                ETIMEDOUT, "PTRACE_INTERRUPT");
  stopped = true;
  note_signal_stop(st);
  if (ptrace(PTRACE_GETREGS, tid, nullptr, &saved) != 0) throw_ptrace("reading registers of " + who, errno, "PTRACE_GETREGS");
}

// PTRACE_INTERRUPT a running tracee and wait for the stop; false if it does not stop in time.
bool RemoteTask::Impl::interrupt_and_wait() {
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0) return false;
  int st = 0;
  if (!wait_stop(pid, tid, timeout_ms, &st)) return false;
  stopped = true;
  note_signal_stop(st);
  return true;
}

long RemoteTask::Impl::inject(long nr, const long a[6]) {
  const std::string name = syscall_name(nr);
  for (int attempt = 0;; attempt++) {
    struct user_regs_struct r = saved;
    r.rip = gadget;
    r.rax = static_cast<unsigned long long>(nr);
    r.orig_rax = static_cast<unsigned long long>(-1);  // not inside a syscall: no restart logic applies
    r.rdi = a[0];
    r.rsi = a[1];
    r.rdx = a[2];
    r.r10 = a[3];
    r.r8 = a[4];
    r.r9 = a[5];
    if (ptrace(PTRACE_SETREGS, tid, nullptr, &r) != 0) {
      if (errno == ESRCH) throw_gone(pid, "");
      throw_ptrace("setting registers to inject " + name, errno, "PTRACE_SETREGS");
    }
    regs_dirty = true;
    for (;;) {
      if (ptrace(PTRACE_SINGLESTEP, tid, nullptr, nullptr) != 0) {
        if (errno == ESRCH) throw_gone(pid, "");
        throw_ptrace("single-stepping injected " + name, errno, "PTRACE_SINGLESTEP");
      }
      stopped = false;
      int st = 0;
      if (!wait_stop(pid, tid, timeout_ms, &st)) {
        broken = true;
        trap_queued = true;
        // Get the thread back into a stop so the destructor can restore it.
        interrupt_and_wait();
        throw Error("EM_PTRACE",
                    "injected " + name + " did not complete within " + std::to_string(timeout_ms) +
                        " ms in process " + std::to_string(pid) + "; registers will be restored",
                    ETIMEDOUT, name);
      }
      stopped = true;
      struct user_regs_struct now {};
      if (ptrace(PTRACE_GETREGS, tid, nullptr, &now) != 0) {
        if (errno == ESRCH) throw_gone(pid, "");
        throw_ptrace("reading the result of injected " + name, errno, "PTRACE_GETREGS");
      }
      bool trap = WSTOPSIG(st) == SIGTRAP && (st >> 16) == 0;
      if (trap) {
        // Ours is the kernel's single-step trap (si_code > 0); a SIGTRAP someone sent
        // with kill() (si_code <= 0) belongs to the target and is re-delivered later.
        siginfo_t si {};
        if (ptrace(PTRACE_GETSIGINFO, tid, nullptr, &si) == 0 && si.si_code <= 0) trap = false;
      }
      if (trap && now.rip == gadget + 2) {
        long ret = static_cast<long>(now.rax);
        if ((ret == -kERESTARTSYS || ret == -kERESTARTNOINTR || ret == -kERESTARTNOHAND) && attempt < 16)
          break;  // interrupted by a signal before doing anything: run it again
        if (ret == -kERESTART_RESTARTBLOCK) ret = -EINTR;
        return ret;
      }
      // Any other stop: a signal being delivered (remember it, re-deliver it after
      // detaching) or a group/interrupt stop. It may come before our instruction ran
      // (rip == gadget) or after the syscall with the single-step trap still queued
      // (rip == gadget + 2); either way stepping on leads to the trap without running
      // anything else.
      note_signal_stop(st);
      if (now.rip != gadget && now.rip != gadget + 2) {
        broken = true;
        throw Error("EM_PTRACE",
                    "thread " + std::to_string(tid) + " left the injected " + name + " unexpectedly (rip moved)", EIO,
                    name);
      }
    }
  }
}

void RemoteTask::Impl::restore_and_detach() {
  if (trap_queued) consume_step_trap();
  struct user_regs_struct r = saved;
  const bool deliver = !signals.empty();
  // A thread stopped inside a blocking syscall shows rax = -ERESTART*, orig_rax = nr.
  // Without a signal to deliver, restart it ourselves exactly as the kernel's
  // signal-return path would (as CRIU does): back over the 2-byte `syscall`, with rax
  // set to the call number (or restart_syscall for a restart block). With a signal to
  // deliver, leave the registers exact so the kernel decides between EINTR and restart
  // according to the handler's SA_RESTART.
  if (!deliver && static_cast<long>(r.orig_rax) >= 0) {
    long err = -static_cast<long>(r.rax);
    if (err == kERESTARTSYS || err == kERESTARTNOINTR || err == kERESTARTNOHAND) {
      r.rax = r.orig_rax;
      r.rip -= 2;
      r.orig_rax = static_cast<unsigned long long>(-1);
    } else if (err == kERESTART_RESTARTBLOCK) {
      r.rax = SYS_restart_syscall;
      r.rip -= 2;
      r.orig_rax = static_cast<unsigned long long>(-1);
    }
  }
  if (regs_dirty || r.rip != saved.rip || r.rax != saved.rax) {
    if (ptrace(PTRACE_SETREGS, tid, nullptr, &r) != 0) {
      if (errno == ESRCH) return;  // died meanwhile: nothing left to restore
      throw_ptrace("restoring registers of thread " + std::to_string(tid), errno, "PTRACE_SETREGS");
    }
    regs_dirty = false;
  }
  // Signals taken off the thread's queue while we held it go back on the queue before
  // it resumes (PTRACE_DETACH's own signal argument is ignored at an event stop, so it
  // is not used); the thread dequeues them as soon as it runs. Their siginfo details
  // are lost: that is the best ptrace allows.
  for (int sig : signals) ::syscall(SYS_tgkill, pid, tid, sig);
  if (ptrace(PTRACE_DETACH, tid, nullptr, nullptr) != 0 && errno != ESRCH)
    throw_ptrace("detaching from thread " + std::to_string(tid), errno, "PTRACE_DETACH");
  stopped = false;
  signals.clear();
}

RemoteTask::RemoteTask(pid_t tid, int timeout_ms) : impl_(std::make_shared<Impl>()) {
  Impl& m = *impl_;
  m.tid = tid;
  m.timeout_ms = timeout_ms;
  if (tid <= 0) throw Error("EM_BAD_ARG", "thread id must be a positive integer, got " + std::to_string(tid), EINVAL);
  std::string tgid = status_field(tid, "Tgid");
  if (tgid.empty()) throw_gone(tid, "");
  m.pid = std::atoi(tgid.c_str());
  char state = 0;
  unsigned long flags = 0;
  if (!task_stat(m.pid, tid, &state, &flags)) throw_gone(m.pid, "");
  if (state == 'Z' || state == 'X') throw_gone(m.pid, "(it is a zombie)");
  if (flags & kPF_KTHREAD)
    throw Error("EM_PTRACE", "process " + std::to_string(m.pid) + " (" + comm_of(m.pid) +
                                 ") is a kernel thread: it has no user memory to attach to",
                EPERM, "PTRACE_SEIZE");
  if (m.pid == getpid())
    throw Error("EM_PTRACE", "process " + std::to_string(m.pid) + " is the monitor itself; cannot attach to it", EPERM,
                "PTRACE_SEIZE");
  std::shared_ptr<PidGate> gate = PidGate::of(m.pid);
  if (!gate->enter(timeout_ms))
    throw Error("EM_PTRACE",
                "another syscall injection into process " + std::to_string(m.pid) + " by this monitor is still running after " +
                    std::to_string(timeout_ms) + " ms",
                EBUSY, "PTRACE_SEIZE");
  m.gate = gate;
  // Find the gadget before stopping anything: scanning libc takes milliseconds.
  m.gadget = find_gadget(m.pid);
  std::shared_ptr<Impl> keep = impl_;
  try {
    m.tracer.run([&m] { m.seize(); });
  } catch (...) {
    // Registers are untouched; if the thread is stopped, let it go, otherwise the
    // tracer thread's exit detaches it.
    if (m.stopped) {
      try {
        m.tracer.run([&m] { m.restore_and_detach(); });
      } catch (...) {
      }
    }
    m.tracer.stop();
    throw;
  }
}

RemoteTask::~RemoteTask() {
  Impl& m = *impl_;
  if (m.map_len && !m.broken) {
    try {
      long a[6] = {static_cast<long>(m.map_addr), static_cast<long>(m.map_len), 0, 0, 0, 0};
      m.tracer.run([&m, &a] { m.inject(SYS_munmap, a); });
    } catch (...) {
    }
  }
  bool done = false;
  try {
    m.tracer.run([&m, &done] {
      if (!m.stopped && !m.interrupt_and_wait()) return;
      m.restore_and_detach();
      done = true;
    });
  } catch (...) {
    done = !m.regs_dirty;  // restore failed: detached by the tracer thread's exit unless registers are ours
  }
  if (done || !m.regs_dirty) {
    m.tracer.stop();
    return;
  }
  // The thread runs with injected registers and will not stop: keep trying in the
  // background until it does (or dies), then restore it. Never leave it corrupted.
  std::shared_ptr<Impl> keep = impl_;
  m.tracer.run_detached([keep] {
    Impl& k = *keep;
    for (int i = 0; ::syscall(SYS_tgkill, k.pid, k.tid, 0) == 0; i++) {
      if (k.interrupt_and_wait()) {
        try {
          k.restore_and_detach();
        } catch (...) {
        }
        return;
      }
    }
  });
}

long RemoteTask::syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6) {
  Impl& m = *impl_;
  if (m.broken)
    throw Error("EM_PTRACE", "an earlier injection into process " + std::to_string(m.pid) + " failed; not injecting " +
                                 syscall_name(nr),
                EIO, syscall_name(nr));
  long a[6] = {a1, a2, a3, a4, a5, a6};
  long ret = 0;
  m.tracer.run([&] { ret = m.inject(nr, a); });
  return ret;
}

long RemoteTask::check(const char* what, long nr, long a1, long a2, long a3, long a4, long a5, long a6) {
  long r = syscall(nr, a1, a2, a3, a4, a5, a6);
  if (r < 0 && r > -4096) {
    int e = static_cast<int>(-r);
    std::string name = syscall_name(nr);
    throw Error("EM_INJECT",
                std::string(what) + ": " + name + " inside process " + std::to_string(impl_->pid) + " failed: " +
                    std::strerror(e) + " (errno " + std::to_string(e) + ")",
                e, name);
  }
  return r;
}

uint64_t RemoteTask::scratch(size_t bytes) {
  Impl& m = *impl_;
  // 128 bytes of red zone, then 8 KiB of slack for whatever the thread's frame holds.
  uint64_t want = (m.saved.rsp - 128 - 8192 - bytes) & ~static_cast<uint64_t>(63);
  std::ifstream maps("/proc/" + std::to_string(m.pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long lo, hi;
    if (sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2) continue;
    if (m.saved.rsp > lo && m.saved.rsp <= hi) {
      if (want >= lo && want < m.saved.rsp) return want;
      break;
    }
  }
  size_t len = (bytes + 4095) & ~static_cast<size_t>(4095);
  if (m.map_len >= len) return m.map_addr;
  if (m.map_len) {
    check("releasing a scratch mapping", SYS_munmap, static_cast<long>(m.map_addr), static_cast<long>(m.map_len));
    m.map_len = 0;
  }
  long addr = check("mapping a scratch area", SYS_mmap, 0, static_cast<long>(len), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  m.map_addr = static_cast<uint64_t>(addr);
  m.map_len = len;
  return m.map_addr;
}

void RemoteTask::write(uint64_t addr, const void* buf, size_t n) {
  struct iovec l = {const_cast<void*>(buf), n}, r = {reinterpret_cast<void*>(addr), n};
  ssize_t w = process_vm_writev(impl_->pid, &l, 1, &r, 1, 0);
  if (w != static_cast<ssize_t>(n)) {
    int e = w < 0 ? errno : EFAULT;
    if (e == ESRCH) throw_gone(impl_->pid, "");
    throw_sys("process_vm_writev", "writing " + std::to_string(n) + " bytes into process " + std::to_string(impl_->pid), e);
  }
}

void RemoteTask::read(uint64_t addr, void* buf, size_t n) {
  struct iovec l = {buf, n}, r = {reinterpret_cast<void*>(addr), n};
  ssize_t got = process_vm_readv(impl_->pid, &l, 1, &r, 1, 0);
  if (got != static_cast<ssize_t>(n)) {
    int e = got < 0 ? errno : EFAULT;
    if (e == ESRCH) throw_gone(impl_->pid, "");
    throw_sys("process_vm_readv", "reading " + std::to_string(n) + " bytes from process " + std::to_string(impl_->pid), e);
  }
}

pid_t RemoteTask::tid() const { return impl_->tid; }
pid_t RemoteTask::pid() const { return impl_->pid; }
const struct user_regs_struct& RemoteTask::saved_regs() const { return impl_->saved; }

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
  if (DIR* d = opendir(dir.c_str())) {
    while (struct dirent* e = readdir(d))
      if (e->d_name[0] >= '0' && e->d_name[0] <= '9') tids.push_back(std::atoi(e->d_name));
    closedir(d);
  }
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

std::unique_ptr<RemoteTask> borrow_thread(pid_t pid, int timeout_ms) {
  // Fast path, the common case: the main thread is fine; ranking every thread of a
  // QEMU (dozens) reads three /proc files each.
  require_process(pid);
  std::string leader = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid);
  char state = 0;
  unsigned long flags = 0;
  bool leader_ok = task_stat(pid, pid, &state, &flags) && (state == 'S' || state == 'R') &&
                   read_file(leader + "/wchan").find("userfault") == std::string::npos &&
                   std::atoi(status_field(pid, "PPid").c_str()) != getpid();
  if (leader_ok) {
    try {
      return std::make_unique<RemoteTask>(pid, timeout_ms);
    } catch (const Error& e) {
      if (e.err() != ETIMEDOUT) throw;
    }
  }
  std::vector<pid_t> cands = thread_candidates(pid);
  if (leader_ok) cands.erase(std::remove(cands.begin(), cands.end(), pid), cands.end());
  if (cands.empty()) throw Error("EM_PTRACE", "no thread of process " + std::to_string(pid) + " could be stopped", ETIMEDOUT);
  // A thread that does not stop costs timeout_ms: try a few, best first.
  const size_t tries = std::min<size_t>(cands.size(), 3);
  for (size_t i = 0;; i++) {
    try {
      return std::make_unique<RemoteTask>(cands[i], timeout_ms);
    } catch (const Error& e) {
      if (e.err() != ETIMEDOUT || i + 1 >= tries) throw;
    }
  }
}

}  // namespace em
