#include "wake_signal.h"

#include <signal.h>

#include <mutex>

namespace em {

namespace {
void on_wake(int) {}  // the point is the EINTR, not the handler

int install() {
  // From the top of the real-time range down: glibc keeps the bottom ones for itself,
  // and neither Node, libuv nor V8 uses these. A signal someone else already handles
  // is left alone.
  for (int sig = SIGRTMAX - 1; sig >= SIGRTMAX - 8 && sig > SIGRTMIN; sig--) {
    struct sigaction old = {};
    if (sigaction(sig, nullptr, &old) != 0) continue;
    if (old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) continue;
    struct sigaction sa = {};
    sa.sa_handler = on_wake;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: the interrupted read() must return EINTR
    if (sigaction(sig, &sa, nullptr) == 0) return sig;
  }
  return -1;
}
}  // namespace

int wake_signal() {
  static std::once_flag once;
  static int sig = -1;
  std::call_once(once, [] { sig = install(); });
  return sig;
}

bool unblock_wake_signal() {
  int sig = wake_signal();
  if (sig < 0) return false;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  return pthread_sigmask(SIG_UNBLOCK, &set, nullptr) == 0;
}

void interrupt_thread(pthread_t thread) {
  int sig = wake_signal();
  if (sig >= 0) pthread_kill(thread, sig);
}

void block_process_signals() {
  sigset_t set;
  sigfillset(&set);
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS, SIGABRT}) sigdelset(&set, sig);
  int wake = wake_signal();
  if (wake > 0) sigdelset(&set, wake);
  (void)pthread_sigmask(SIG_BLOCK, &set, nullptr);  // best effort: a failure only leaves the signals to any thread
}

}  // namespace em
