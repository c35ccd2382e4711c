#include "error.h"
#include <cstring>

namespace em {

void throw_sys(const std::string& syscall, const std::string& what, int err) {
  std::string msg = what + ": " + syscall + " failed: " + std::strerror(err) + " (errno " + std::to_string(err) + ")";
  throw Error("EM_SYSCALL", msg, err, syscall);
}

}  // namespace em
