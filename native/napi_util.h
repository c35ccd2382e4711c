// Helpers shared by the N-API bindings: throwing em::Error as the TypeScript
// ElasticmemError, and wrapping a binding body so C++ exceptions never escape raw.
#pragma once
#include <napi.h>
#include <functional>
#include "error.h"

namespace em {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info);
// Build an ElasticmemError (or a plain Error before setErrorClass) from code/message/errno/syscall.
Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message, int err = 0,
                      const std::string& syscall = "");
// Run body; convert em::Error / std::exception into a thrown JS error.
Napi::Value Guard(const Napi::CallbackInfo& info, const std::function<Napi::Value()>& body);
// Argument helpers that throw EM_BAD_ARG naming the argument.
int64_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);

}  // namespace em
