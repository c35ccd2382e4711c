// placeholder until the module lands
#include "napi_util.h"
namespace em {
void RegisterPager(Napi::Env env, Napi::Object exports) {}
}  // namespace em
