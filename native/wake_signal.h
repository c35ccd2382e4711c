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
// Leave signals sent to the whole process (SIGCHLD above all: one for every stop of a
// thread the injector traces, thousands a second while private memory is evicted) to
// the JavaScript thread, whose handlers they are for. Without this the kernel may pick
// the fault thread, which then runs libuv's handler (two writes) and restarts its read
// on the guest's CPU. Synchronous fault signals and the wake signal stay unblocked.
// Call at the start of each thread the pager starts (threads inherit the mask).
void block_process_signals();

}  // namespace em
