// A signal that ends one thread's blocking system call (EINTR) and does nothing else.
//
// Why: the fault thread sleeps in a blocking read() of the userfaultfd. On this class of
// machine that is ~0.5 µs a fault cheaper than a non-blocking read, an EAGAIN and a
// ppoll() over the uffd, the stop eventfd and the target's pidfd (measured: a faulting
// touch 9.9-10.1 µs vs 10.4-10.9 when the fault thread sleeps between faults). A blocking
// read cannot also watch those descriptors, so stopping (and the target's exit, seen by
// a watcher thread) interrupts it with this thread-directed signal instead.
#pragma once
#include <pthread.h>

namespace em {

// The signal number, installed once per process with an empty handler and without
// SA_RESTART (so read() returns EINTR). -1 when no real-time signal is free (another
// library handles them all): callers then keep non-blocking reads.
int wake_signal();
// Unblock the wake signal in the calling thread (threads inherit their creator's mask).
bool unblock_wake_signal();
// Interrupt `thread`'s blocking system call (no-op when the signal is unavailable).
void interrupt_thread(pthread_t thread);

}  // namespace em
