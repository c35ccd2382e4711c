#include "napi_util.h"

#include <system_error>

namespace em {

static Napi::FunctionReference* g_error_class = nullptr;

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorClass expects a class");
  if (!g_error_class) g_error_class = new Napi::FunctionReference();
  *g_error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message, int err,
                      const std::string& syscall) {
  if (g_error_class && !g_error_class->IsEmpty()) {
    Napi::Object obj = g_error_class->New({Napi::String::New(env, message), Napi::String::New(env, code),
                                           Napi::Number::New(env, err),
                                           syscall.empty() ? env.Undefined() : Napi::String::New(env, syscall)});
    return Napi::Error(env, obj);
  }
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", code);
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

Napi::Value Guard(const Napi::CallbackInfo& info, const std::function<Napi::Value()>& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw MakeError(info.Env(), e.code(), e.what(), e.err(), e.syscall());
  } catch (const std::system_error& e) {
    // std::thread and friends: the errno is in the error code (e.g. EAGAIN: no thread)
    throw MakeError(info.Env(), "EM_SYSTEM", e.what(), errno_of(e));
  } catch (const std::exception& e) {
    throw MakeError(info.Env(), "EM_INTERNAL", e.what());
  }
}

int64_t ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Error("EM_BAD_ARG", std::string("argument '") + name + "' must be a number");
  return info[i].As<Napi::Number>().Int64Value();
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString())
    throw Error("EM_BAD_ARG", std::string("argument '") + name + "' must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

}  // namespace em
