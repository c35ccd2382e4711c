// Addon entry: registers the flat functions of each module and keeps the
// TypeScript error class (ElasticmemError) so every native error arrives typed.
#include "napi_util.h"

namespace em {
void RegisterAttach(Napi::Env env, Napi::Object exports);
void RegisterMemStore(Napi::Env env, Napi::Object exports);
void RegisterPager(Napi::Env env, Napi::Object exports);
void RegisterPeerCred(Napi::Env env, Napi::Object exports);
}  // namespace em

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, em::SetErrorClass));
  em::RegisterAttach(env, exports);
  em::RegisterMemStore(env, exports);
  em::RegisterPager(env, exports);
  em::RegisterPeerCred(env, exports);
  return exports;
}

NODE_API_MODULE(elasticmem, Init)
