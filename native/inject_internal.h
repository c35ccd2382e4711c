// Shared by the three parts of the syscall injection; not part of its interface
// (inject.h): inject.cc runs a session (RemoteTask: seize, inject, restore),
// inject_code.cc finds or builds the code the injected calls run on inside the target
// (a `syscall` gadget, the crash-safe trampoline), inject_threads.cc chooses which
// thread of the target to borrow.
#pragma once
#include <signal.h>
#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace em {
namespace inject_detail {

[[noreturn]] void throw_gone(pid_t pid, const std::string& what);
[[noreturn]] void throw_ptrace(const std::string& msg, int err, const char* call);

// One process, also across pid reuse (pid and start time): the key of what is cached
// per process here.
struct ProcessKey {
  pid_t pid;
  unsigned long long start_time;
  bool operator<(const ProcessKey& o) const { return pid != o.pid ? pid < o.pid : start_time < o.start_time; }
};
// Record `value` for `key`, forgetting what an earlier process with the same pid left
// and what processes that have exited left (a daemon attaches to many QEMUs over its
// life: the caches hold only live ones). (kill(pid, 0) fails with ESRCH only for a
// pid that is gone; a reused pid's entry goes by its start time.)
template <typename V>
void remember(std::map<ProcessKey, V>& cache, const ProcessKey& key, V value) {
  for (auto it = cache.begin(); it != cache.end();) {
    const ProcessKey& k = it->first;
    bool stale = k.pid == key.pid ? k.start_time != key.start_time : (kill(k.pid, 0) != 0 && errno == ESRCH);
    it = stale ? cache.erase(it) : std::next(it);
  }
  cache[key] = std::move(value);
}

// The address of a `syscall` instruction (0f 05) in an executable mapping of the
// target: libc first, then the vdso, then anything executable. Cached per process
// (a reused pid is rescanned) and re-checked each use.
uint64_t find_gadget(pid_t pid, unsigned long long start_time);

// ---- Crash-safe injection: the trampoline --------------------------------------
//
// A thread running an injected system call has foreign registers. If the monitor dies
// meanwhile (SIGKILL, crash), the kernel detaches the thread as it is: it would
// return from the call into whatever follows the `syscall` instruction with the
// injected registers. So injected calls do not run on libc's `syscall; ret` but on a
// trampoline of our own in the target:
//
//     syscall                      <- the injected call; rip points here
//     <tail>                       reload every general-purpose register, rflags,
//                                  rsp and rip from a save area and jump back
//
// Before pointing the thread at it, the monitor writes the registers the thread must
// resume with (the same ones the normal restore would set, a blocked syscall already
// rewound for restart) into a per-thread save slot, and passes the slot in rbx
// (rbx survives the syscall). While the monitor lives, it stops the thread at the
// syscall-exit stop (PTRACE_SYSCALL, never single-step: a dead tracer leaves TF and
// the single-step trap armed, and the SIGTRAP would kill the target) and restores the
// registers with ptrace as before: the tail never runs. If the monitor dies at any
// point, the thread finishes the call by itself, runs the tail and resumes its own
// context. The tail never touches memory the interrupted code may still use: it uses
// 24 bytes of the thread's stack below the 128-byte red zone (dead memory by the ABI,
// where a signal frame would land anyway) and only reads the slot, whose `armed` word
// it clears as its last access. FS/GS bases and FPU/vector state are
// never changed by an injection, so they need no restoring.
//
// Layout: one private anonymous mapping per target process, kept for the target's
// lifetime and found again by a restarted monitor (code page r-x with a signature
// header, then kTrampSlots slots of kSlotStride bytes, rw-). Created by the first
// session in a process with one classic-gadget injection (an rwx mmap; the code page
// is then sealed r-x through the trampoline): that mmap, a few microseconds once per
// target, is the only injected call that is not crash-safe.
//
// Slot word 0: owner tid (u32, monitor's pid namespace) | armed (u32); word 1: a
// sequence number (least recently armed slot is reclaimed if all are taken); then
// rsp-136, rip, rflags, rax, rcx, rdx, rsi, rdi, rbp, r8..r15, rbx.
inline constexpr size_t kTrampCodeLen = 4096;
inline constexpr size_t kTrampSlots = 64;
inline constexpr size_t kSlotStride = 256;
inline constexpr size_t kTrampDataLen = kTrampSlots * kSlotStride;
inline constexpr size_t kTailOffset = 64;  // the `syscall` instruction: after the header
inline constexpr size_t kSlotRegsOff = 0x10;
inline constexpr size_t kSlotBytes = 0xa0;

// The code page as it must read in the target when mapped at `code`.
std::vector<unsigned char> tramp_image(uint64_t code);
// A trampoline left in `pid` by an earlier session or an earlier monitor, 0 if none
// (*writable: still rwx, a monitor died between creating and sealing it).
uint64_t find_trampoline(pid_t pid, bool* writable);
bool is_trampoline(pid_t pid, uint64_t code);
// process_vm_readv / writev of exactly n bytes: false otherwise.
bool read_remote(pid_t pid, uint64_t addr, void* buf, size_t n);
bool write_remote(pid_t pid, uint64_t addr, const void* buf, size_t n);

}  // namespace inject_detail
}  // namespace em
