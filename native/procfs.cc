// Reading /proc (procfs.h).
#include "procfs.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>

#include <sstream>

namespace em {

std::string read_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";  // (errno says why)
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    int err = n < 0 ? errno : 0;
    close(fd);  // (read-only: nothing to lose)
    errno = err;
    return err ? "" : out;
  }
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

// State letter, flags and (if asked) parent of /proc/PID/task/TID/stat (comm may contain
// spaces: parse after the last ')').
bool task_stat(pid_t pid, pid_t tid, char* state, unsigned long* flags, long* parent) {
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
  if (parent) *parent = ppid;
  return true;
}

std::string stat_field(pid_t pid, pid_t tid, int field) {
  std::string s = read_file("/proc/" + std::to_string(pid) + (tid ? "/task/" + std::to_string(tid) : "") + "/stat");
  size_t rp = s.rfind(')');
  if (field < 3 || rp == std::string::npos) return "";
  std::istringstream in(s.substr(rp + 1));
  std::string tok;
  for (int f = 3; f <= field; f++)
    if (!(in >> tok)) return "";
  return tok;
}

std::string comm_of(pid_t pid) {
  std::string c = read_file("/proc/" + std::to_string(pid) + "/comm");
  while (!c.empty() && c.back() == '\n') c.pop_back();
  return c;
}

std::vector<std::pair<uint64_t, uint64_t>> uffd_registered_ranges(pid_t pid) {
  std::string text = read_file("/proc/" + std::to_string(pid) + "/smaps");
  if (text.empty()) throw_sys("read", "reading /proc/" + std::to_string(pid) + "/smaps", errno ? errno : EIO);
  std::vector<std::pair<uint64_t, uint64_t>> out;
  unsigned long lo = 0, hi = 0;
  size_t at = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(at, nl - at);
    at = nl + 1;
    unsigned long a = 0, b = 0;
    // a VMA header ("lo-hi perms ..."); its fields follow, VmFlags last
    if (!line.empty() && isxdigit((unsigned char)line[0]) && sscanf(line.c_str(), "%lx-%lx", &a, &b) == 2 && line.find(':') > line.find(' ')) {
      lo = a;
      hi = b;
      continue;
    }
    if (line.compare(0, 8, "VmFlags:") == 0 && (" " + line.substr(8) + " ").find(" um ") != std::string::npos) out.emplace_back(lo, hi);
  }
  return out;
}

}  // namespace em
