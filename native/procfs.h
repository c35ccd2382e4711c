// Reading /proc: whole files and the few fields elasticmem needs of a process or thread.
// A process, thread or field that is not there reads as "" (or false): the caller
// decides what that means.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace em {

// The whole file; "" when it cannot be read, with errno saying why (ENOENT or ESRCH: the
// process or thread is gone), errno 0 after a read that succeeded.
std::string read_file(const std::string& path);
// Field of /proc/PID/status ("TracerPid", "Tgid", "PPid", "NSpid"), leading blanks
// stripped; "" if absent.
std::string status_field(pid_t pid, const char* key);
// State letter, flags and (if asked) parent of /proc/PID/task/TID/stat; false (errno
// from read_file) when it cannot be read or parsed.
bool task_stat(pid_t pid, pid_t tid, char* state, unsigned long* flags, long* parent = nullptr);
// Field `field` (1-based, as in proc(5); from 3 on) of /proc/PID/stat, or of
// /proc/PID/task/TID/stat when tid != 0; "" when the task or the field is missing.
// Counted after the last ')': the command name may hold spaces.
std::string stat_field(pid_t pid, pid_t tid, int field);
// /proc/PID/comm without its newline.
std::string comm_of(pid_t pid);
// The mappings of `pid` registered with a userfaultfd for missing faults (smaps VmFlags
// "um"), as [start, end) ranges in address order. Throws EM_SYSCALL when smaps cannot be read.
std::vector<std::pair<uint64_t, uint64_t>> uffd_registered_ranges(pid_t pid);

}  // namespace em
