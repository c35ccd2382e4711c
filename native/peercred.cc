// peerCred(fd): the credentials of the peer of a connected Unix socket, from the kernel
// (getsockopt SO_PEERCRED): the pid, uid and gid the peer had when it connected (for
// the client end, when the listener called listen()). The daemon checks every control
// connection with it; the answer is fixed at connect time, so unlike a lookup of the
// peer's process through /proc or sock_diag it cannot race with the client.
#include <sys/socket.h>
#include <sys/types.h>
#include <cerrno>
#include <climits>
#include <string>
#include "napi_util.h"

namespace em {

namespace {

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  return Guard(info, [&]() -> Napi::Value {
    int64_t fd = ArgInt(info, 0, "fd");
    if (fd < 0 || fd > INT32_MAX) throw Error("EM_BAD_ARG", "peerCred: fd " + std::to_string(fd) + " is not a file descriptor");
    struct ucred cred {};
    socklen_t len = sizeof cred;
    if (getsockopt((int)fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
      throw_sys("getsockopt(SO_PEERCRED)", "peer credentials of fd " + std::to_string(fd));
    if (len != sizeof cred) throw Error("EM_INTERNAL", "getsockopt(SO_PEERCRED) returned " + std::to_string(len) + " bytes");
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("pid", Napi::Number::New(info.Env(), cred.pid));
    out.Set("uid", Napi::Number::New(info.Env(), cred.uid));
    out.Set("gid", Napi::Number::New(info.Env(), cred.gid));
    return out;
  });
}

}  // namespace

void RegisterPeerCred(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred));
}

}  // namespace em
