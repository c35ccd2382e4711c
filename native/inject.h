// Running system calls inside another process (ptrace syscall injection, x86-64).
//
// elasticmem needs a few things done *by* the target (QEMU) that no outside process
// may do for it: create a userfaultfd for its mm, receive an fd over SCM_RIGHTS,
// MADV_DONTNEED its own private pages. RemoteTask stops one thread of the target,
// points it at a `syscall` instruction with our arguments, single-steps it, and puts
// every register back exactly as it was, including a system call the thread was
// blocked in (restarted as the kernel would have restarted it).
//
// Crash safety: a monitor may die (SIGKILL) at any point of an injection; the kernel
// then detaches the thread as it is. So injected calls run on a small trampoline
// mapped once into the target (and found again by the next monitor): `syscall`
// followed by code that reloads the thread's own registers from a save slot the
// monitor filled beforehand. While the monitor lives it stops the thread right after
// the call (syscall-exit stop) and restores the registers itself; a thread whose
// monitor died finishes the call and restores itself. Only the trampoline's own
// creation (one mmap, once per target) runs on libc's `syscall; ret`. inject.cc has
// the layout and the reasoning.
//
// Thread model: all ptrace requests of one RemoteTask run on a private tracer thread
// it owns, so a RemoteTask may be created on one thread and used from another. If
// that tracer thread ever has to give up, the kernel detaches the tracee by itself
// when the tracer thread exits; a thread left with injected registers that refuses
// to stop is restored by a background rescue thread as soon as it stops.
//
// Caution for callers: an injected MADV_DONTNEED on a range registered with a uffd
// that enabled UFFD_FEATURE_EVENT_REMOVE blocks in the target until the monitor reads
// the UFFD_EVENT_REMOVE message: the uffd reader must keep running meanwhile (the
// injection then times out instead of deadlocking, but it fails).
#pragma once
#include <sys/types.h>
#include <sys/user.h>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace em {

constexpr int kInjectTimeoutMs = 3000;

class RemoteTask {
 public:
  // Seize and stop thread `tid` (of any process). Throws em::Error: EM_NO_PROCESS
  // (gone), EM_PTRACE (not permitted, already traced, kernel thread, did not stop
  // within timeout_ms: errno ETIMEDOUT).
  explicit RemoteTask(pid_t tid, int timeout_ms = kInjectTimeoutMs);
  ~RemoteTask();  // restores registers, re-delivers signals that arrived meanwhile, detaches
  RemoteTask(const RemoteTask&) = delete;
  RemoteTask& operator=(const RemoteTask&) = delete;

  // Run one system call in the stopped thread; returns the raw kernel result
  // (-errno on failure). A call interrupted by a signal (-ERESTART*) is retried.
  // Throws em::Error only when the injection itself fails (EM_PTRACE / EM_NO_PROCESS).
  long syscall(long nr, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0, long a6 = 0);
  // Same, but throws EM_INJECT (errno = the call's errno, syscall = its name) on a
  // negative result, naming `what` in the message.
  long check(const char* what, long nr, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0, long a5 = 0,
             long a6 = 0);
  // Start of a scratch area of `bytes` bytes in the target: on the stopped thread's
  // stack 8 KiB below its red zone when the stack mapping has room, otherwise an
  // anonymous mapping injected once and unmapped at detach. Areas of successive calls
  // may overlap: carve everything needed out of one call.
  uint64_t scratch(size_t bytes);
  void write(uint64_t addr, const void* buf, size_t n);  // process_vm_writev, throws on short write
  void read(uint64_t addr, void* buf, size_t n);         // process_vm_readv, throws on short read

  pid_t tid() const;
  pid_t pid() const;  // thread group of tid
  const struct user_regs_struct& saved_regs() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// The thread of `pid` to borrow: the main thread unless it waits in a userfaultfd
// fault, sleeps uninterruptibly, or the target is the monitor's own child (libuv
// would reap the main thread's ptrace stops); then another thread; threads in a
// user-mode uffd fault before threads in a kernel-mode one (inject.cc has the order).
pid_t pick_thread(pid_t pid);
std::vector<pid_t> thread_candidates(pid_t pid);

// Seize the best thread of `pid` (thread_candidates order), moving on to the next
// when one does not stop within timeout_ms (at most 3 tries).
std::unique_ptr<RemoteTask> borrow_thread(pid_t pid, int timeout_ms = kInjectTimeoutMs);

// Throws EM_NO_PROCESS naming the pid when it does not exist (or is a zombie).
void require_process(pid_t pid);

// Name of a system call number, for messages ("userfaultfd", "ioctl", ...).
std::string syscall_name(long nr);

}  // namespace em
