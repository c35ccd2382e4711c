// One C++ exception type for the data plane. Every failing syscall throws em::Error
// carrying errno and the syscall's name; addon.cc converts it to the TypeScript
// ElasticmemError class (code, errno, syscall) handed to the addon at load.
#pragma once
#include <cerrno>
#include <stdexcept>
#include <string>

namespace em {

class Error : public std::runtime_error {
 public:
  Error(std::string code, std::string message, int err = 0, std::string syscall = "")
      : std::runtime_error(std::move(message)), code_(std::move(code)), errno_(err), syscall_(std::move(syscall)) {}
  const std::string& code() const { return code_; }
  int err() const { return errno_; }
  const std::string& syscall() const { return syscall_; }

 private:
  std::string code_;
  int errno_;
  std::string syscall_;
};

// The errno a caught exception carries: an em::Error's, or a std::system_error's (thread
// creation, ...) when its code is an errno; else 0. (For errors sent on to TypeScript.)
int errno_of(const std::exception& e);

// Throw for a failed syscall, capturing errno now: "what: syscall: strerror (errno N)".
[[noreturn]] void throw_sys(const std::string& syscall, const std::string& what, int err = errno);

}  // namespace em
