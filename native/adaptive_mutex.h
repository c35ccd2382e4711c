// A mutex that spins briefly (glibc's bounded adaptive spin) before sleeping.
//
// Why: the page table's lock is held for a few microseconds at a time by the fault
// thread and the evictor, which run on different CPUs. With std::mutex a waiter goes
// to sleep at once, so the holder's unlock must wake it with a futex call and an
// inter-processor interrupt: measured at ~1.5 µs of every fault on this machine,
// paid by the fault thread on the critical path. The adaptive type spins at most
// glibc.pthread.mutex_spin_count rounds (100 by default) and then sleeps as usual,
// so it is never a busy loop.
#pragma once
#include <pthread.h>

#include <cerrno>

#include "error.h"

namespace em {

class AdaptiveMutex {
 public:
  AdaptiveMutex() {
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);
    if (rc == 0) rc = pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
    if (rc == 0) rc = pthread_mutex_init(&m_, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) throw Error("EM_SYSCALL", "initialising the page table lock failed", rc, "pthread_mutex_init");
  }
  ~AdaptiveMutex() { pthread_mutex_destroy(&m_); }
  AdaptiveMutex(const AdaptiveMutex&) = delete;
  AdaptiveMutex& operator=(const AdaptiveMutex&) = delete;

  void lock() {
    int rc = pthread_mutex_lock(&m_);
    if (rc != 0) throw Error("EM_SYSCALL", "locking the page table failed", rc, "pthread_mutex_lock");
  }
  bool try_lock() { return pthread_mutex_trylock(&m_) == 0; }
  void unlock() { pthread_mutex_unlock(&m_); }  // cannot fail for a lock this thread holds

 private:
  pthread_mutex_t m_;
};

}  // namespace em
