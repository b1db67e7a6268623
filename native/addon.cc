// kvfs's native addon. Loaded by exactly one TypeScript file (src/native.ts). Every function returns a number:
// a result, or -errno, which the TypeScript side turns into an error.
#include <napi.h>

#include "fuse-dev.h"

namespace {

Napi::Value ProbeFuseDevice(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), kvfs::ProbeFuseDevice());
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probeFuseDevice", Napi::Function::New(env, ProbeFuseDevice));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvfs_native, Init)
