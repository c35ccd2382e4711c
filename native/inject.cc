// ptrace syscall injection: one session (RemoteTask) that seizes a thread, runs system
// calls in it and puts it back. See inject.h for the why; the code the calls run on is
// inject_code.cc, the choice of thread inject_threads.cc. x86-64 only.
#include "inject.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
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
#include "inject_internal.h"
#include "procfs.h"
#include "wake_signal.h"

#if !defined(__x86_64__)
#error "elasticmem's syscall injection is written for x86-64"
#endif

#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif

namespace em {

namespace inject_detail {

[[noreturn]] void throw_gone(pid_t pid, const std::string& what) {
  throw Error("EM_NO_PROCESS", "process " + std::to_string(pid) + " does not exist (exited?) " + what, ESRCH);
}

[[noreturn]] void throw_ptrace(const std::string& msg, int err, const char* call) {
  throw Error("EM_PTRACE", msg + ": " + call + " failed: " + std::strerror(err) + " (errno " + std::to_string(err) + ")",
              err, call);
}

}  // namespace inject_detail

using namespace inject_detail;

namespace {

// Kernel-internal restart codes, visible in rax of a thread stopped inside a syscall.
constexpr long kERESTARTSYS = 512;
constexpr long kERESTARTNOINTR = 513;
constexpr long kERESTARTNOHAND = 514;
constexpr long kERESTART_RESTARTBLOCK = 516;
constexpr unsigned kPF_KTHREAD = 0x00200000;

using Clock = std::chrono::steady_clock;

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

// The main thread's stack mapping ("[stack]") per process, as the last read of its maps
// found it (RemoteTask::scratch). That mapping only grows down and is never unmapped, so
// while a stopped thread's stack pointer lies in the recorded range, the scratch space
// below it does too: /proc/PID/maps (hundreds of lines for QEMU, read while the thread
// is held) need not be read again. A thread on another stack (a QEMU coroutine) misses.
std::mutex g_stack_mu;
std::map<ProcessKey, std::pair<uint64_t, uint64_t>> g_stacks;

unsigned long long start_time_of(pid_t pid) {
  return std::strtoull(stat_field(pid, 0, 22).c_str(), nullptr, 10);  // starttime
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
    // wait_stop sleeps 20 µs between polls once its spin is over (an injected call that
    // takes a while, like a big MADV_DONTNEED): with the default 50 µs timer slack each
    // such sleep overshot to ~70 µs, all of it time the target's thread stays stopped.
    // (best effort: the default slack only makes the stops longer)
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    pthread_setname_np(pthread_self(), "em-tracer");  // (not its creator's name; failure is harmless)
    block_process_signals();  // (each stop of its tracee raises a SIGCHLD: not for this thread)
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
  if (!task_stat(pid, pid, &state, &flags)) {
    // Gone meanwhile, or /proc could not be read (EMFILE, ENOMEM): only the first is the target's doing.
    int err = errno;
    if (err == 0 || err == ENOENT || err == ESRCH) throw_gone(pid, "");
    throw_sys("open", "reading /proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/stat", err);
  }
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

namespace {

struct TrampEntry {
  uint64_t code = 0;
  bool unavailable = false;  // the target refused an executable mapping: classic gadget only
};
std::mutex g_tramp_mu;
std::map<ProcessKey, TrampEntry> g_tramps;

// Test-only switches, read once: ELASTICMEM_TEST_INJECT_CRASH_AT=<point>[:<n>] makes
// the monitor SIGKILL itself the n-th time (default 1st) it reaches <point>, so tests
// can kill it in each window of an injection; ELASTICMEM_TEST_INJECT_NO_TRAMPOLINE=1
// injects through libc's `syscall; ret` as before, to prove those tests fail without
// the trampoline.
struct TestSwitches {
  std::string crash_at;
  std::atomic<long> crash_countdown{0};
  bool no_trampoline = false;
  TestSwitches() {
    if (const char* s = getenv("ELASTICMEM_TEST_INJECT_CRASH_AT")) {
      crash_at = s;
      long n = 1;
      size_t colon = crash_at.find(':');
      if (colon != std::string::npos) {
        n = std::max(1L, std::atol(crash_at.c_str() + colon + 1));
        crash_at.resize(colon);
      }
      crash_countdown = n;
    }
    const char* nt = getenv("ELASTICMEM_TEST_INJECT_NO_TRAMPOLINE");
    no_trampoline = nt && std::strcmp(nt, "1") == 0;
  }
};
TestSwitches& test_switches() {
  static TestSwitches s;
  return s;
}
void crash_point(const char* where) {
  TestSwitches& s = test_switches();
  if (s.crash_at.empty() || s.crash_at != where) return;
  if (--s.crash_countdown == 0) kill(getpid(), SIGKILL);
}

}  // namespace

struct RemoteTask::Impl {
  ~Impl() {
    if (gate) gate->leave();
  }
  std::shared_ptr<PidGate> gate;  // held (entered) for the whole session
  pid_t tid = 0, pid = 0;
  unsigned long long start_time = 0;  // of the process: with pid, the key of the per-process caches
  int timeout_ms = kInjectTimeoutMs;
  struct user_regs_struct saved {};
  uint64_t gadget = 0;
  uint64_t tramp = 0;      // trampoline code page in the target (0: classic gadget)
  uint64_t slot = 0;       // this session's save slot (armed while non-zero)
  bool prepared = false;   // trampoline and slot looked up for this session
  bool stopped = false;    // tracee is in a ptrace stop right now
  bool regs_dirty = false; // tracee's registers are not the saved ones
  bool broken = false;     // an injection failed midway: refuse further calls
  std::vector<int> signals;  // signals that arrived while we held the thread, to re-deliver
  uint64_t map_addr = 0;   // injected scratch mapping (when the stack has no room)
  size_t map_len = 0;
  Tracer tracer;

  void seize();
  long inject(long nr, const long a[6]);
  long run_call(uint64_t entry, long nr, const long a[6]);
  void prepare();
  uint64_t create_trampoline(bool* seal);
  void park();
  uint64_t pick_slot();
  void disarm();
  struct user_regs_struct resume_regs(bool deliver) const;
  void restore_and_detach();
  bool interrupt_and_wait();
  int interrupt_errno = 0;  // why the last PTRACE_INTERRUPT failed (0: it did not)
  void note_signal_stop(int st);
};

void RemoteTask::Impl::note_signal_stop(int st) {
  int sig = WSTOPSIG(st);
  int event = st >> 16;
  // Event stops (PTRACE_INTERRUPT, group-stop under SEIZE) carry no signal to re-deliver:
  // the kernel re-enters a pending group stop by itself on detach. Syscall stops
  // (SIGTRAP|0x80 with PTRACE_O_TRACESYSGOOD) are ours.
  if (event != 0 || sig == (SIGTRAP | 0x80)) return;
  signals.push_back(sig);
}

void RemoteTask::Impl::seize() {
  // (for error messages only: reading comm costs a /proc read on every injection)
  auto who = [this] { return "thread " + std::to_string(tid) + " of process " + std::to_string(pid) + " (" + comm_of(pid) + ")"; };
  // TRACESYSGOOD: syscall stops report SIGTRAP|0x80, never confused with a real SIGTRAP.
  // Never PTRACE_O_EXITKILL: a dying monitor must leave the target running.
  if (ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(PTRACE_O_TRACESYSGOOD)) != 0) {
    int e = errno;
    if (e == ESRCH) throw_gone(pid, "");
    if (e == EPERM) {
      std::string tracer = status_field(tid, "TracerPid");
      if (!tracer.empty() && tracer != "0")
        throw_ptrace(who() + " is already traced by process " + tracer + " (" + comm_of(std::atoi(tracer.c_str())) +
                         "): a debugger or another elasticmem monitor is attached; detach it first",
                     e, "PTRACE_SEIZE");
      throw_ptrace("not permitted to trace " + who() + " (run the monitor as root with CAP_SYS_PTRACE)", e,
                   "PTRACE_SEIZE");
    }
    throw_ptrace("cannot trace " + who(), e, "PTRACE_SEIZE");
  }
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0) {
    int e = errno;
    if (e == ESRCH) throw_gone(pid, "");
    throw_ptrace("cannot stop " + who(), e, "PTRACE_INTERRUPT");
  }
  int st = 0;
  if (!wait_stop(pid, tid, timeout_ms, &st))
    throw Error("EM_PTRACE",
                who() + " did not stop within " + std::to_string(timeout_ms) +
                    " ms (blocked in uninterruptible sleep or an unresolved userfaultfd fault?)",
                ETIMEDOUT, "PTRACE_INTERRUPT");
  stopped = true;
  note_signal_stop(st);
  if (ptrace(PTRACE_GETREGS, tid, nullptr, &saved) != 0) throw_ptrace("reading registers of " + who(), errno, "PTRACE_GETREGS");
  crash_point("seized");
}

// PTRACE_INTERRUPT a running tracee and wait for the stop; false if it does not stop in time.
bool RemoteTask::Impl::interrupt_and_wait() {
  if (ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0) {
    interrupt_errno = errno;
    return false;
  }
  interrupt_errno = 0;
  int st = 0;
  if (!wait_stop(pid, tid, timeout_ms, &st)) return false;
  stopped = true;
  note_signal_stop(st);
  return true;
}

// The registers the thread resumes with. A thread stopped inside a blocking syscall
// shows rax = -ERESTART*, orig_rax = nr. Without a signal to deliver, restart it
// ourselves exactly as the kernel's signal-return path would (as CRIU does): back over
// the 2-byte `syscall`, with rax set to the call number (or restart_syscall for a
// restart block). With a signal to deliver, leave the registers exact so the kernel
// decides between EINTR and restart according to the handler's SA_RESTART.
struct user_regs_struct RemoteTask::Impl::resume_regs(bool deliver) const {
  struct user_regs_struct r = saved;
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
  return r;
}

// Map the trampoline into the target. One classic-gadget injection: an RWX mmap, the
// code written into it, and the caller turns it r-x through the trampoline itself
// (*seal = true). Where writable+executable is refused (SELinux execmem, W^X policy)
// the mapping starts read-write and mprotect runs through the gadget too. 0 if the
// target refuses an executable mapping altogether.
uint64_t RemoteTask::Impl::create_trampoline(bool* seal) {
  const size_t len = kTrampCodeLen + kTrampDataLen;
  *seal = false;
  long a[6] = {0, static_cast<long>(len), PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0};
  long addr = run_call(gadget, SYS_mmap, a);
  park();
  const bool rwx = !(addr < 0 && addr > -4096);
  if (!rwx) {
    a[2] = PROT_READ | PROT_WRITE;
    addr = run_call(gadget, SYS_mmap, a);
    park();
    if (addr < 0 && addr > -4096) return 0;
  }
  uint64_t code = static_cast<uint64_t>(addr);
  std::vector<unsigned char> img = tramp_image(code);
  bool ok = write_remote(pid, code, img.data(), img.size());
  if (ok && !rwx) {
    long p[6] = {addr, static_cast<long>(kTrampCodeLen), PROT_READ | PROT_EXEC, 0, 0, 0};
    ok = run_call(gadget, SYS_mprotect, p) == 0;
    park();
  }
  if (!ok) {
    // Best effort: this trampoline is not used (0 is returned) whether or not the unmap
    // works; a failure leaves one unused page mapped in the target.
    long u[6] = {addr, static_cast<long>(len), 0, 0, 0, 0};
    run_call(gadget, SYS_munmap, u);
    park();
    return 0;
  }
  *seal = rwx;
  crash_point("trampoline-created");
  return code;
}

// Between classic-gadget calls, give the thread registers it can safely resume with
// should the monitor die: its own (a blocked syscall rewound for restart), not the
// injected ones sitting on libc's `ret`.
void RemoteTask::Impl::park() {
  struct user_regs_struct r = resume_regs(false);
  if (ptrace(PTRACE_SETREGS, tid, nullptr, &r) != 0) {
    if (errno == ESRCH) throw_gone(pid, "");
    throw_ptrace("restoring registers of thread " + std::to_string(tid), errno, "PTRACE_SETREGS");
  }
  regs_dirty = true;  // not necessarily what restore_and_detach will set (signals to deliver)
}

// This session's slot. A slot is in use while armed: its thread may still run the
// tail (the monitor died during the call, or a signal handler interrupted the tail).
// Any disarmed slot is free (the tail disarms with its last access), preferably one
// this thread used before, else the least recently armed. Armed slots are reclaimed
// only when provably idle: their thread is gone, or it is the thread we hold and it
// sits exactly at the context the slot would restore (a monitor died after arming or
// after restoring, before disarming). Last resort, with all 64 taken: the least
// recently armed slot, unless it is this thread's and the thread is inside the
// trampoline (a tail takes nanoseconds: an old armed slot is a leftover of a monitor
// that died in one of those two windows, microseconds each; only a thread sitting in
// a signal handler that interrupted its tail would still need it).
uint64_t RemoteTask::Impl::pick_slot() {
  std::vector<unsigned char> data(kTrampDataLen);
  if (!read_remote(pid, tramp + kTrampCodeLen, data.data(), data.size()))
    throw_sys("process_vm_readv", "reading the injection save slots of process " + std::to_string(pid));
  const struct user_regs_struct r = resume_regs(false);
  const bool in_trampoline = saved.rip >= tramp && saved.rip < tramp + kTrampCodeLen;
  auto alive = [&](uint32_t t) {
    return access(("/proc/" + std::to_string(pid) + "/task/" + std::to_string(t)).c_str(), F_OK) == 0;
  };
  long own = -1, idle = -1, reclaim = -1, last = -1;
  uint64_t max_seq = 0, idle_seq = ~0ULL, last_seq = ~0ULL;
  for (size_t i = 0; i < kTrampSlots; i++) {
    const unsigned char* sl = &data[i * kSlotStride];
    uint32_t owner, armed;
    uint64_t seq, srsp, srip;
    std::memcpy(&owner, sl, 4);
    std::memcpy(&armed, sl + 4, 4);
    std::memcpy(&seq, sl + 8, 8);
    std::memcpy(&srsp, sl + 0x10, 8);
    std::memcpy(&srip, sl + 0x18, 8);
    max_seq = std::max(max_seq, seq);
    const bool mine = owner == static_cast<uint32_t>(tid);
    if (!armed) {
      if (mine && own < 0) own = static_cast<long>(i);
      if (seq < idle_seq) idle_seq = seq, idle = static_cast<long>(i);
    } else if (reclaim < 0 && (mine ? (srsp + 136 == r.rsp && srip == r.rip) : !alive(owner))) {
      reclaim = static_cast<long>(i);
    } else if (!(mine && in_trampoline) && seq < last_seq) {
      last_seq = seq, last = static_cast<long>(i);
    }
  }
  long pick = own >= 0 ? own : idle >= 0 ? idle : reclaim >= 0 ? reclaim : last;
  if (pick < 0)
    throw Error("EM_PTRACE",
                "all " + std::to_string(kTrampSlots) + " injection save slots of process " + std::to_string(pid) +
                    " are in use by threads inside the trampoline; cannot inject crash-safely",
                EBUSY);
  uint64_t s = tramp + kTrampCodeLen + static_cast<uint64_t>(pick) * kSlotStride;
  // Owner, armed, sequence and registers in one write, before the thread is pointed at the trampoline.
  uint64_t buf[kSlotBytes / 8];
  buf[0] = static_cast<uint64_t>(static_cast<uint32_t>(tid)) | (1ULL << 32);
  buf[1] = max_seq + 1;
  const uint64_t regs[] = {r.rsp - 136, r.rip, r.eflags, r.rax, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp,
                           r.r8,        r.r9,  r.r10,    r.r11, r.r12, r.r13, r.r14, r.r15, r.rbx};
  static_assert(sizeof regs == kSlotBytes - kSlotRegsOff, "slot layout");
  std::memcpy(&buf[2], regs, sizeof regs);
  if (!write_remote(pid, s, buf, sizeof buf))
    throw_sys("process_vm_writev", "arming an injection save slot in process " + std::to_string(pid));
  return s;
}

// After the thread has its own registers back: the slot may be reused.
void RemoteTask::Impl::disarm() {
  if (!slot) return;
  uint32_t zero = 0;
  // Unchecked: a slot left armed is only taken back later by the last-resort reclaim of
  // stale slots (the trampoline has several), never used by two sessions at once.
  write_remote(pid, slot + 4, &zero, sizeof zero);
  slot = 0;
}

// Find (or create) the trampoline and arm a slot, once per session, before the
// first injected call.
void RemoteTask::Impl::prepare() {
  prepared = true;
  if (test_switches().no_trampoline) return;
  ProcessKey key{pid, start_time};
  uint64_t code = 0;
  {
    std::lock_guard<std::mutex> lk(g_tramp_mu);
    auto it = g_tramps.find(key);
    if (it != g_tramps.end()) {
      if (it->second.unavailable) return;
      code = it->second.code;
    }
  }
  if (code && !is_trampoline(pid, code)) code = 0;
  bool refused = false, seal = false;
  if (!code) code = find_trampoline(pid, &seal);
  if (!code) {
    code = create_trampoline(&seal);
    refused = code == 0;
  }
  {
    std::lock_guard<std::mutex> lk(g_tramp_mu);
    remember(g_tramps, key, TrampEntry{code, refused});
  }
  if (!code) return;
  tramp = code;
  slot = pick_slot();
  crash_point("armed");
  if (seal) {
    // Code page writable no longer, slot pages executable no longer (created rwx in one
    // mmap): through the trampoline, so crash-safe. Should either fail, the pages keep
    // their rights and still work (find_trampoline accepts both).
    long p[6] = {static_cast<long>(code), static_cast<long>(kTrampCodeLen), PROT_READ | PROT_EXEC, 0, 0, 0};
    run_call(tramp + kTailOffset, SYS_mprotect, p);
    long d[6] = {static_cast<long>(code + kTrampCodeLen), static_cast<long>(kTrampDataLen), PROT_READ | PROT_WRITE, 0, 0, 0};
    run_call(tramp + kTailOffset, SYS_mprotect, d);
  }
}

long RemoteTask::Impl::inject(long nr, const long a[6]) {
  if (!prepared) prepare();
  return run_call(slot ? tramp + kTailOffset : gadget, nr, a);
}

// One system call at `entry` (a `syscall` instruction), driven by syscall stops:
// PTRACE_SYSCALL to the entry stop, again to the exit stop, where the result is read
// and the thread stays stopped. Nothing after the `syscall` instruction ever runs
// while the monitor lives.
long RemoteTask::Impl::run_call(uint64_t entry, long nr, const long a[6]) {
  const std::string name = syscall_name(nr);
  for (int attempt = 0;; attempt++) {
    struct user_regs_struct r = saved;
    r.rip = entry;
    r.rax = static_cast<unsigned long long>(nr);
    r.orig_rax = static_cast<unsigned long long>(-1);  // not inside a syscall: no restart logic applies
    r.rdi = a[0];
    r.rsi = a[1];
    r.rdx = a[2];
    r.r10 = a[3];
    r.r8 = a[4];
    r.r9 = a[5];
    if (entry != gadget) r.rbx = slot;  // the tail finds its save slot here
    if (ptrace(PTRACE_SETREGS, tid, nullptr, &r) != 0) {
      if (errno == ESRCH) throw_gone(pid, "");
      throw_ptrace("setting registers to inject " + name, errno, "PTRACE_SETREGS");
    }
    regs_dirty = true;
    const bool safe = entry != gadget;  // the test crash points cover crash-safe calls only
    if (safe) crash_point("regs-set");
    for (;;) {
      if (ptrace(PTRACE_SYSCALL, tid, nullptr, nullptr) != 0) {
        if (errno == ESRCH) throw_gone(pid, "");
        throw_ptrace("running injected " + name, errno, "PTRACE_SYSCALL");
      }
      stopped = false;
      int st = 0;
      if (!wait_stop(pid, tid, timeout_ms, &st)) {
        broken = true;
        // Get the thread back into a stop so the destructor can restore it.
        interrupt_and_wait();
        throw Error("EM_PTRACE",
                    "injected " + name + " did not complete within " + std::to_string(timeout_ms) +
                        " ms in process " + std::to_string(pid) + "; registers will be restored",
                    ETIMEDOUT, name);
      }
      stopped = true;
      if (WSTOPSIG(st) == (SIGTRAP | 0x80) && (st >> 16) == 0) {
        struct __ptrace_syscall_info info {};
        if (ptrace(PTRACE_GET_SYSCALL_INFO, tid, reinterpret_cast<void*>(sizeof info), &info) <= 0) {
          if (errno == ESRCH) throw_gone(pid, "");
          broken = true;
          throw_ptrace("reading the syscall stop of injected " + name, errno, "PTRACE_GET_SYSCALL_INFO");
        }
        if (info.instruction_pointer != entry + 2) {
          broken = true;
          throw Error("EM_PTRACE",
                      "thread " + std::to_string(tid) + " stopped in a system call outside the injected " + name,
                      EIO, name);
        }
        if (info.op == PTRACE_SYSCALL_INFO_ENTRY) {
          if (safe) crash_point("entry-stop");
          continue;
        }
        long ret = info.op == PTRACE_SYSCALL_INFO_EXIT ? static_cast<long>(info.exit.rval) : -ENOSYS;
        if (safe) crash_point("exit-stop");
        if ((ret == -kERESTARTSYS || ret == -kERESTARTNOINTR || ret == -kERESTARTNOHAND) && attempt < 16)
          break;  // interrupted by a signal before doing anything: run it again
        if (ret == -kERESTART_RESTARTBLOCK) ret = -EINTR;
        return ret;
      }
      // Any other stop: a signal being delivered (remember it, re-deliver it after
      // detaching) or a group/interrupt stop, before our instruction ran.
      note_signal_stop(st);
      if (safe) crash_point("signal-stop");
      struct user_regs_struct now {};
      if (ptrace(PTRACE_GETREGS, tid, nullptr, &now) != 0) {
        if (errno == ESRCH) throw_gone(pid, "");
        throw_ptrace("reading registers during injected " + name, errno, "PTRACE_GETREGS");
      }
      if (now.rip != entry && now.rip != entry + 2) {
        broken = true;
        throw Error("EM_PTRACE",
                    "thread " + std::to_string(tid) + " left the injected " + name + " unexpectedly (rip moved)", EIO,
                    name);
      }
    }
  }
}

void RemoteTask::Impl::restore_and_detach() {
  const bool deliver = !signals.empty();
  struct user_regs_struct r = resume_regs(deliver);
  // Signals taken off the thread's queue while we held it go back on the queue before
  // it resumes (PTRACE_DETACH's own signal argument is ignored at an event stop, so it
  // is not used); the thread dequeues them as soon as it runs. Their siginfo details
  // are lost: that is the best ptrace allows. Queued before the registers are put
  // back: should the monitor die in between, the thread still has the injected
  // registers, handles the signals on the way out of the trampoline and restores
  // itself; after the registers, the exact (-ERESTART*) ones need the signal pending.
  // (Unchecked on purpose: ESRCH means the thread died, and any other failure (EAGAIN:
  // its real-time signal queue is full) cannot be mended here; the registers must be
  // restored whatever happens, so the restore goes on.)
  for (int sig : signals) ::syscall(SYS_tgkill, pid, tid, sig);
  if (deliver) crash_point("redelivered");
  if (regs_dirty || r.rip != saved.rip || r.rax != saved.rax) {
    if (ptrace(PTRACE_SETREGS, tid, nullptr, &r) != 0) {
      if (errno == ESRCH) return;  // died meanwhile: nothing left to restore
      throw_ptrace("restoring registers of thread " + std::to_string(tid), errno, "PTRACE_SETREGS");
    }
    regs_dirty = false;
  }
  crash_point("restored");
  disarm();
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
  m.start_time = start_time_of(m.pid);
  m.gadget = find_gadget(m.pid, m.start_time);
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
    } catch (...) {  // a destructor cannot throw: the scratch page stays mapped in the target (one page)
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
    // Nothing may escape this thread (std::terminate): a thread that died meanwhile
    // (wait_stop throws EM_NO_PROCESS) needs no restoring.
    try {
      while (::syscall(SYS_tgkill, k.pid, k.tid, 0) == 0) {
        if (k.interrupt_and_wait()) {
          k.restore_and_detach();
          return;
        }
        // ESRCH while the thread lives: it is no longer our tracee, nothing to restore
        // from here. Otherwise try again shortly: a PTRACE_INTERRUPT that fails at
        // once must not make this a busy loop.
        if (k.interrupt_errno == ESRCH) return;
        ::usleep(50 * 1000);
      }
    } catch (...) {
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
  const ProcessKey key{m.pid, m.start_time};
  auto holds_rsp = [&](uint64_t lo, uint64_t hi) { return m.saved.rsp > lo && m.saved.rsp <= hi; };
  auto fits = [&](uint64_t lo) { return want >= lo && want < m.saved.rsp; };
  {
    std::lock_guard<std::mutex> lk(g_stack_mu);
    auto it = g_stacks.find(key);
    if (it != g_stacks.end() && holds_rsp(it->second.first, it->second.second) && fits(it->second.first)) return want;
  }
  std::ifstream maps("/proc/" + std::to_string(m.pid) + "/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long lo, hi;
    if (sscanf(line.c_str(), "%lx-%lx", &lo, &hi) != 2 || !holds_rsp(lo, hi)) continue;
    if (line.size() >= 7 && line.compare(line.size() - 7, 7, "[stack]") == 0) {
      std::lock_guard<std::mutex> lk(g_stack_mu);
      remember(g_stacks, key, std::pair<uint64_t, uint64_t>(lo, hi));
    }
    if (fits(lo)) return want;
    break;
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

}  // namespace em
