#include "error.h"
#include <cstring>
#include <system_error>

namespace em {

int errno_of(const std::exception& e) {
  if (auto* em = dynamic_cast<const Error*>(&e)) return em->err();
  if (auto* se = dynamic_cast<const std::system_error*>(&e)) {
    const std::error_category& c = se->code().category();
    if (c == std::generic_category() || c == std::system_category()) return se->code().value();
  }
  return 0;
}

void throw_sys(const std::string& syscall, const std::string& what, int err) {
  std::string msg = what + ": " + syscall + " failed: " + std::strerror(err) + " (errno " + std::to_string(err) + ")";
  throw Error("EM_SYSCALL", msg, err, syscall);
}

}  // namespace em
