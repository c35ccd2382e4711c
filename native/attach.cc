// placeholder until the module lands
#include "napi_util.h"
namespace em {
void RegisterAttach(Napi::Env env, Napi::Object exports) {}
}  // namespace em
