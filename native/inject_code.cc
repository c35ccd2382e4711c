// The code injected system calls run on inside the target: a `syscall` instruction
// found in its own code (the gadget), and the crash-safe trampoline elasticmem maps
// into it (layout and reasoning in inject_internal.h). x86-64 only.
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "error.h"
#include "inject_internal.h"
#include "procfs.h"

namespace em {
namespace inject_detail {

namespace {

std::mutex g_gadget_mu;
std::map<ProcessKey, uint64_t> g_gadgets;

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

constexpr char kTrampMagic[24] = "elasticmem-inject v1";

// Assembled from (Intel syntax; slot in rbx, offsets as above):
//   syscall; mov rsp,[rbx+0x10]; push [rbx+0x18]; push [rbx+0x98]; push [rbx+0x20];
//   popfq; mov rax..r15,[rbx+0x28..0x90]; mov dword [rbx+4],0; pop rbx; ret 136
// With rsp = original rsp - 136, the pushes put rip at rsp0-144, rbx at rsp0-152 and
// rflags at rsp0-160 (below the red zone, where a signal frame could not reach them:
// the kernel writes below rsp-128). popfq takes rflags; the slot is disarmed only
// after its last read, so once `armed` is 0 nobody reads the slot again; `pop rbx`
// and `ret 136` take rbx and rip from the stack and leave rsp = rsp0-144+8+136 = rsp0.
const unsigned char kTail[] = {
    0x0f, 0x05,                                // syscall
    0x48, 0x8b, 0x63, 0x10,                    // mov rsp,[rbx+0x10]
    0xff, 0x73, 0x18,                          // push qword [rbx+0x18]  (rip)
    0xff, 0xb3, 0x98, 0x00, 0x00, 0x00,        // push qword [rbx+0x98]  (rbx)
    0xff, 0x73, 0x20,                          // push qword [rbx+0x20]  (rflags)
    0x9d,                                      // popfq
    0x48, 0x8b, 0x43, 0x28,                    // mov rax,[rbx+0x28]
    0x48, 0x8b, 0x4b, 0x30,                    // mov rcx,[rbx+0x30]
    0x48, 0x8b, 0x53, 0x38,                    // mov rdx,[rbx+0x38]
    0x48, 0x8b, 0x73, 0x40,                    // mov rsi,[rbx+0x40]
    0x48, 0x8b, 0x7b, 0x48,                    // mov rdi,[rbx+0x48]
    0x48, 0x8b, 0x6b, 0x50,                    // mov rbp,[rbx+0x50]
    0x4c, 0x8b, 0x43, 0x58,                    // mov r8,[rbx+0x58]
    0x4c, 0x8b, 0x4b, 0x60,                    // mov r9,[rbx+0x60]
    0x4c, 0x8b, 0x53, 0x68,                    // mov r10,[rbx+0x68]
    0x4c, 0x8b, 0x5b, 0x70,                    // mov r11,[rbx+0x70]
    0x4c, 0x8b, 0x63, 0x78,                    // mov r12,[rbx+0x78]
    0x4c, 0x8b, 0xab, 0x80, 0x00, 0x00, 0x00,  // mov r13,[rbx+0x80]
    0x4c, 0x8b, 0xb3, 0x88, 0x00, 0x00, 0x00,  // mov r14,[rbx+0x88]
    0x4c, 0x8b, 0xbb, 0x90, 0x00, 0x00, 0x00,  // mov r15,[rbx+0x90]
    0xc7, 0x43, 0x04, 0x00, 0x00, 0x00, 0x00,  // mov dword [rbx+4],0   (disarm: last slot access)
    0x5b,                                      // pop rbx
    0xc2, 0x88, 0x00,                          // ret 136
};

}  // namespace

uint64_t find_gadget(pid_t pid, unsigned long long start_time) {
  ProcessKey key{pid, start_time};
  {
    std::lock_guard<std::mutex> lk(g_gadget_mu);
    auto it = g_gadgets.find(key);
    if (it != g_gadgets.end() && has_syscall_at(pid, it->second)) return it->second;
  }
  uint64_t g = scan_gadget(pid);
  std::lock_guard<std::mutex> lk(g_gadget_mu);
  remember(g_gadgets, key, g);
  return g;
}

// The code page as it must read in the target when mapped at `code`.
std::vector<unsigned char> tramp_image(uint64_t code) {
  std::vector<unsigned char> img(kTrampCodeLen, 0xcc);  // int3 everywhere else
  std::memcpy(img.data(), kTrampMagic, sizeof kTrampMagic);
  uint64_t hdr[3] = {code + kTrampCodeLen, kTrampSlots, kTailOffset};
  std::memcpy(img.data() + sizeof kTrampMagic, hdr, sizeof hdr);
  std::memcpy(img.data() + kTailOffset, kTail, sizeof kTail);
  return img;
}

bool read_remote(pid_t pid, uint64_t addr, void* buf, size_t n) {
  struct iovec l = {buf, n}, r = {reinterpret_cast<void*>(addr), n};
  return process_vm_readv(pid, &l, 1, &r, 1, 0) == static_cast<ssize_t>(n);
}

bool write_remote(pid_t pid, uint64_t addr, const void* buf, size_t n) {
  struct iovec l = {const_cast<void*>(buf), n}, r = {reinterpret_cast<void*>(addr), n};
  return process_vm_writev(pid, &l, 1, &r, 1, 0) == static_cast<ssize_t>(n);
}

bool is_trampoline(pid_t pid, uint64_t code) {
  std::vector<unsigned char> have(kTrampCodeLen);
  unsigned char probe[16];
  return read_remote(pid, code, have.data(), have.size()) && have == tramp_image(code) &&
         read_remote(pid, code + kTrampCodeLen + kTrampDataLen - sizeof probe, probe, sizeof probe);
}

// A trampoline left in `pid` by an earlier session or an earlier monitor: an
// anonymous r-x mapping holding our exact code page (checked page by page in case
// the kernel merged it with a neighbour). 0 if none. *writable: not sealed yet (a
// monitor died between creating and sealing it, or an older one sealed the code page
// only): its code page still rwx, or its slot pages executable.
uint64_t find_trampoline(pid_t pid, bool* writable) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::vector<std::string> lines;
  for (std::string l; std::getline(maps, l);) lines.push_back(l);
  auto executable_at = [&](uint64_t addr) {
    for (const auto& l : lines) {
      unsigned long lo, hi;
      char perm[8] = {0};
      if (sscanf(l.c_str(), "%lx-%lx %7s", &lo, &hi, perm) == 3 && lo <= addr && addr < hi) return perm[2] == 'x';
    }
    return false;
  };
  for (const std::string& line : lines) {
    unsigned long lo, hi, off, inode;
    char perm[8] = {0}, dev[16] = {0};
    int n = 0;
    if (sscanf(line.c_str(), "%lx-%lx %7s %lx %15s %lu %n", &lo, &hi, perm, &off, dev, &inode, &n) < 6) continue;
    if ((std::strcmp(perm, "r-xp") != 0 && std::strcmp(perm, "rwxp") != 0) || inode != 0 || line.find('/', static_cast<size_t>(n)) != std::string::npos ||
        line.find('[', static_cast<size_t>(n)) != std::string::npos)
      continue;
    // Pages near either end: a merged neighbour sits on one side of it.
    for (uint64_t p = lo; p < hi; p += kTrampCodeLen) {
      if (p >= lo + 16 * kTrampCodeLen && p + 16 * (kTrampCodeLen + kTrampDataLen) < hi) continue;
      if (is_trampoline(pid, p)) {
        *writable = perm[1] == 'w' || executable_at(p + kTrampCodeLen);
        return p;
      }
    }
  }
  return 0;
}

}  // namespace inject_detail
}  // namespace em
