// kvfs's native addon. Loaded by exactly one TypeScript file (src/native.ts). Every function returns a number:
// a result, or -errno, which the TypeScript side turns into an error. Nothing here throws on a system error.
#include <napi.h>
#include <cerrno>
#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <memory>

#include "blob-io.h"
#include "channel.h"
#include "daemon-files.h"
#include "fuse-dev.h"
#include "mapped.h"
#include "xattrs.h"

namespace {

using kvfs::Channel;

Napi::Value Num(Napi::Env env, double v) { return Napi::Number::New(env, v); }

Napi::Value ProbeFuseDevice(const Napi::CallbackInfo& info) { return Num(info.Env(), kvfs::ProbeFuseDevice()); }
Napi::Value OpenFuseDevice(const Napi::CallbackInfo& info) { return Num(info.Env(), kvfs::OpenFuseDevice()); }

Napi::Value CloneFuseDevice(const Napi::CallbackInfo& info) {
  return Num(info.Env(), kvfs::CloneFuseDevice(info[0].As<Napi::Number>().Int32Value()));
}

Napi::Value MountFuse(const Napi::CallbackInfo& info) {
  return Num(info.Env(), kvfs::MountFuse(info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::String>(),
                                         info[2].As<Napi::String>(), info[3].As<Napi::String>(),
                                         info[4].As<Napi::String>(),
                                         static_cast<unsigned long>(info[5].As<Napi::Number>().Int64Value())));
}

Napi::Value FusermountMount(const Napi::CallbackInfo& info) {
  return Num(info.Env(), kvfs::FusermountMount(info[0].As<Napi::String>(), info[1].As<Napi::String>()));
}

Napi::Value LockFile(const Napi::CallbackInfo& info) {
  return Num(info.Env(), kvfs::LockFile(info[0].As<Napi::String>()));
}

Napi::Value ReleaseMapped(const Napi::CallbackInfo& info) {
  return Num(info.Env(), static_cast<double>(kvfs::ReleaseMapped(info[0].As<Napi::String>())));
}

// glibc malloc's figures: { inUse, free } bytes
Napi::Value MallocInfo(const Napi::CallbackInfo& info) {
  kvfs::MallocFigures m = kvfs::MallocInfo();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("inUse", Num(info.Env(), static_cast<double>(m.in_use)));
  o.Set("free", Num(info.Env(), static_cast<double>(m.free)));
  return o;
}

// names of a file's xattrs (not following a symlink): an array of strings, or -errno
Napi::Value ListXattrs(const Napi::CallbackInfo& info) {
  int err = 0;
  std::vector<std::string> names = kvfs::ListXattrs(info[0].As<Napi::String>(), &err);
  if (err) return Num(info.Env(), err);
  Napi::Array out = Napi::Array::New(info.Env(), names.size());
  for (size_t i = 0; i < names.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::String::New(info.Env(), names[i]));
  return out;
}

// one xattr's value (not following a symlink): a Buffer, or -errno
Napi::Value GetXattr(const Napi::CallbackInfo& info) {
  int err = 0;
  std::string v = kvfs::GetXattr(info[0].As<Napi::String>(), info[1].As<Napi::String>(), &err);
  if (err) return Num(info.Env(), err);
  return Napi::Buffer<char>::Copy(info.Env(), v.data(), v.size());
}

Napi::Value RedirectOutput(const Napi::CallbackInfo& info) {
  return Num(info.Env(), kvfs::RedirectOutput(info[0].As<Napi::String>()));
}

// syncfs(2) of the filesystem holding a directory, on a worker thread (it waits for the disk).
class SyncfsWorker : public Napi::AsyncWorker {
 public:
  SyncfsWorker(Napi::Function done, std::string path) : Napi::AsyncWorker(done), path_(std::move(path)) {}
  void Execute() override {
    int fd = open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      err_ = errno;
      return;
    }
    if (syncfs(fd) < 0) err_ = errno;
    close(fd);
  }
  void OnOK() override { Callback().Call({Napi::Number::New(Env(), -err_)}); }

 private:
  std::string path_;
  int err_ = 0;
};

// syncfs(dir, done(result)): result 0, or -errno
Napi::Value Syncfs(const Napi::CallbackInfo& info) {
  (new SyncfsWorker(info[1].As<Napi::Function>(), info[0].As<Napi::String>().Utf8Value()))->Queue();
  return info.Env().Undefined();
}

// putFile(spare, path, data, done(result)) on a worker thread (blob-io.h PutFile): result 0 or
// -errno. data is held (a reference) until done runs; the caller leaves it unchanged meanwhile.
class PutFileWorker : public Napi::AsyncWorker {
 public:
  PutFileWorker(Napi::Function done, std::string spare, std::string path, Napi::Uint8Array data)
      : Napi::AsyncWorker(done), spare_(std::move(spare)), path_(std::move(path)), data_(data.Data()),
        len_(data.ByteLength()), ref_(Napi::Persistent(static_cast<Napi::Object>(data))) {}
  void Execute() override { result_ = kvfs::PutFile(spare_, path_, data_, len_); }
  void OnOK() override { Callback().Call({Napi::Number::New(Env(), result_)}); }

 private:
  std::string spare_, path_;
  const uint8_t* data_;
  size_t len_;
  Napi::ObjectReference ref_;
  int result_ = 0;
};

Napi::Value PutFile(const Napi::CallbackInfo& info) {
  (new PutFileWorker(info[3].As<Napi::Function>(), info[0].As<Napi::String>().Utf8Value(),
                     info[1].As<Napi::String>().Utf8Value(), info[2].As<Napi::Uint8Array>()))->Queue();
  return info.Env().Undefined();
}

// retireFile(path, spare, done(result)) on a worker thread (blob-io.h RetireFile): the size the file had, or -errno.
class RetireFileWorker : public Napi::AsyncWorker {
 public:
  RetireFileWorker(Napi::Function done, std::string path, std::string spare)
      : Napi::AsyncWorker(done), path_(std::move(path)), spare_(std::move(spare)) {}
  void Execute() override { result_ = kvfs::RetireFile(path_, spare_); }
  void OnOK() override { Callback().Call({Napi::Number::New(Env(), static_cast<double>(result_))}); }

 private:
  std::string path_, spare_;
  int64_t result_ = 0;
};

Napi::Value RetireFile(const Napi::CallbackInfo& info) {
  (new RetireFileWorker(info[2].As<Napi::Function>(), info[0].As<Napi::String>().Utf8Value(),
                        info[1].As<Napi::String>().Utf8Value()))->Queue();
  return info.Env().Undefined();
}

Napi::Value PeerUid(const Napi::CallbackInfo& info) {
  return Num(info.Env(), static_cast<double>(kvfs::PeerUid(info[0].As<Napi::Number>().Int32Value())));
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  return Num(info.Env(), kvfs::CloseFd(info[0].As<Napi::Number>().Int32Value()));
}

// The Channel as a JS class. new NativeChannel(fds, arena, classSizes, pipeSize, onWake)
class ChannelWrap : public Napi::ObjectWrap<ChannelWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeChannel",
                       {InstanceMethod("start", &ChannelWrap::Start), InstanceMethod("poll", &ChannelWrap::Poll),
                        InstanceMethod("spin", &ChannelWrap::Spin),
                        InstanceMethod("stock", &ChannelWrap::Stock), InstanceMethod("unstock", &ChannelWrap::Unstock),
                        InstanceMethod("unstockOne", &ChannelWrap::UnstockOne),
                        InstanceMethod("reply", &ChannelWrap::Reply), InstanceMethod("stop", &ChannelWrap::Stop),
                        InstanceMethod("stats", &ChannelWrap::Stats),
                        InstanceMethod("enableFastReads", &ChannelWrap::EnableFastReads),
                        InstanceMethod("enableEarlyWrites", &ChannelWrap::EnableEarlyWrites),
                        InstanceMethod("enableSpliceReads", &ChannelWrap::EnableSpliceReads),
                        InstanceMethod("endWrite", &ChannelWrap::EndWrite),
                        InstanceMethod("publish", &ChannelWrap::Publish),
                        InstanceMethod("publishFile", &ChannelWrap::PublishFile),
                        InstanceMethod("publishAttr", &ChannelWrap::PublishAttr),
                        InstanceMethod("retractAttr", &ChannelWrap::RetractAttr),
                        InstanceMethod("setSize", &ChannelWrap::SetSize),
                        InstanceMethod("retract", &ChannelWrap::Retract),
                        InstanceMethod("setClean", &ChannelWrap::SetClean)});
  }

  explicit ChannelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ChannelWrap>(info) {
    Napi::Env env = info.Env();
    auto fdsArr = info[0].As<Napi::Array>();
    std::vector<int> fds;
    for (uint32_t i = 0; i < fdsArr.Length(); i++) fds.push_back(fdsArr.Get(i).As<Napi::Number>().Int32Value());
    auto arena = info[1].As<Napi::ArrayBuffer>();
    arena_ref_ = Napi::Persistent(arena);
    auto sizesArr = info[2].As<Napi::Array>();
    std::vector<uint32_t> sizes;
    for (uint32_t i = 0; i < sizesArr.Length(); i++) sizes.push_back(sizesArr.Get(i).As<Napi::Number>().Uint32Value());
    size_t pipe_size = info[3].As<Napi::Number>().Uint32Value();
    tsfn_ = Napi::ThreadSafeFunction::New(env, info[4].As<Napi::Function>(), "kvfs-channel-wake", 0, 1);
    tsfn_.Unref(env);
    auto tsfn = tsfn_;
    channel_ = std::make_unique<Channel>(std::move(fds), static_cast<uint8_t*>(arena.Data()), arena.ByteLength(),
                                         std::move(sizes), pipe_size, [tsfn]() mutable {
                                           tsfn.NonBlockingCall();
                                         });
  }

  ~ChannelWrap() override {
    if (channel_) channel_->Stop();
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    int r = channel_->Start();
    if (r == 0) tsfn_.Ref(info.Env());
    return Num(info.Env(), r);
  }

  // poll(out: Uint8Array, max, status: Uint32Array[2]) -> n; status[0] = closed, status[1] = needs mask
  Napi::Value Poll(const Napi::CallbackInfo& info) {
    auto out = info[0].As<Napi::Uint8Array>();
    int max = info[1].As<Napi::Number>().Int32Value();
    auto status = info[2].As<Napi::Uint32Array>();
    int cap = static_cast<int>(out.ByteLength() / kvfs::kRecordSize);
    if (max > cap) max = cap;
    bool closed = false;
    uint32_t needs = 0;
    int n = channel_->Poll(out.Data(), max, &closed, &needs);
    status[0] = closed ? 1 : 0;
    status[1] = needs;
    return Num(info.Env(), n);
  }

  // spin(us) -> whether a record is queued (Channel::Spin)
  Napi::Value Spin(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), channel_->Spin(info[0].As<Napi::Number>().Uint32Value()));
  }

  Napi::Value Stock(const Napi::CallbackInfo& info) {
    return Num(info.Env(), channel_->Stock(info[0].As<Napi::Number>().Int32Value(),
                                           info[1].As<Napi::Number>().Uint32Value()));
  }

  Napi::Value UnstockOne(const Napi::CallbackInfo& info) {
    return Num(info.Env(), static_cast<double>(channel_->UnstockOne(info[0].As<Napi::Number>().Int32Value())));
  }

  Napi::Value Unstock(const Napi::CallbackInfo& info) {
    std::vector<std::pair<int, uint32_t>> got;
    channel_->Unstock(&got);
    auto arr = Napi::Array::New(info.Env(), got.size() * 2);
    for (size_t i = 0; i < got.size(); i++) {
      arr.Set(static_cast<uint32_t>(2 * i), Num(info.Env(), got[i].first));
      arr.Set(static_cast<uint32_t>(2 * i + 1), Num(info.Env(), got[i].second));
    }
    return arr;
  }

  // reply(reader, a: Uint8Array, b?: Uint8Array, c?: Uint8Array) -> bytes written or -errno
  Napi::Value Reply(const Napi::CallbackInfo& info) {
    uint32_t reader = info[0].As<Napi::Number>().Uint32Value();
    struct iovec iov[3];
    int n = 0;
    for (size_t i = 1; i < info.Length() && n < 3; i++) {
      if (!info[i].IsTypedArray()) continue;
      auto a = info[i].As<Napi::Uint8Array>();
      if (a.ByteLength() == 0) continue;
      iov[n].iov_base = a.Data();
      iov[n].iov_len = a.ByteLength();
      n++;
    }
    return Num(info.Env(), static_cast<double>(channel_->Reply(reader, iov, n)));
  }

  Napi::Value EnableFastReads(const Napi::CallbackInfo& info) {
    channel_->EnableFastReads(info[0].ToBoolean().Value());
    return info.Env().Undefined();
  }

  Napi::Value EnableEarlyWrites(const Napi::CallbackInfo& info) {
    channel_->EnableEarlyWrites(info[0].ToBoolean().Value());
    return info.Env().Undefined();
  }

  Napi::Value EnableSpliceReads(const Napi::CallbackInfo& info) {
    channel_->EnableSpliceReads(info[0].ToBoolean().Value());
    return info.Env().Undefined();
  }

  // endWrite(ino): JS applied an early write of ino (read-index.h EndWrite)
  Napi::Value EndWrite(const Napi::CallbackInfo& info) {
    channel_->read_index().EndWrite(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
    return info.Env().Undefined();
  }

  // publish(ino, size, chunkSize, idx, data: Uint8Array | null, mark?): the caller keeps data alive until retract
  Napi::Value Publish(const Napi::CallbackInfo& info) {
    uint64_t ino = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    uint64_t size = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    uint32_t chunk = info[2].As<Napi::Number>().Uint32Value();
    uint64_t idx = static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value());
    const uint8_t* data = nullptr;
    uint32_t len = 0;
    if (info[4].IsTypedArray()) {
      auto a = info[4].As<Napi::Uint8Array>();
      data = a.Data();
      len = static_cast<uint32_t>(a.ByteLength());
    }
    bool mark = info.Length() > 5 && info[5].ToBoolean().Value();
    if (chunk == 0 || len > chunk) return Num(info.Env(), -EINVAL);
    channel_->read_index().Publish(ino, size, chunk, idx, data, len, mark);
    return Num(info.Env(), 0);
  }

  // publishFile(ino, size, chunkSize, idx, path: string, len, mark?): chunk idx is the first len bytes of that file
  Napi::Value PublishFile(const Napi::CallbackInfo& info) {
    uint64_t ino = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    uint64_t size = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    uint32_t chunk = info[2].As<Napi::Number>().Uint32Value();
    uint64_t idx = static_cast<uint64_t>(info[3].As<Napi::Number>().Int64Value());
    std::string path = info[4].As<Napi::String>().Utf8Value();
    uint32_t len = info[5].As<Napi::Number>().Uint32Value();
    bool mark = info.Length() > 6 && info[6].ToBoolean().Value();
    if (chunk == 0 || len > chunk || path.empty()) return Num(info.Env(), -EINVAL);
    channel_->read_index().PublishFile(ino, size, chunk, idx, std::move(path), len, mark);
    return Num(info.Env(), 0);
  }

  Napi::Value SetSize(const Napi::CallbackInfo& info) {
    channel_->read_index().SetSize(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()),
                                   static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value()));
    return info.Env().Undefined();
  }

  // setClean(ino, clean): whether a FLUSH of ino may be answered at once
  Napi::Value SetClean(const Napi::CallbackInfo& info) {
    channel_->read_index().SetClean(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()),
                                    info[1].ToBoolean().Value());
    return info.Env().Undefined();
  }

  // publishAttr(ino, body: Uint8Array of 104 bytes): GETATTRs of ino are answered with this fuse_attr_out
  Napi::Value PublishAttr(const Napi::CallbackInfo& info) {
    uint64_t ino = static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value());
    if (!info[1].IsTypedArray()) return Num(info.Env(), -EINVAL);
    auto body = info[1].As<Napi::Uint8Array>();
    if (body.ByteLength() != kvfs::ReadIndex::kAttrOutSize) return Num(info.Env(), -EINVAL);
    channel_->read_index().PublishAttr(ino, body.Data());
    return Num(info.Env(), 0);
  }

  // retractAttr(ino): GETATTRs of ino go to JS again
  Napi::Value RetractAttr(const Napi::CallbackInfo& info) {
    channel_->read_index().RetractAttr(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
    return info.Env().Undefined();
  }

  // retract(ino, idx = -1): returns once no reader uses what was taken back
  Napi::Value Retract(const Napi::CallbackInfo& info) {
    int64_t idx = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : -1;
    channel_->read_index().Retract(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()), idx);
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    channel_->Stop();
    tsfn_.Unref(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    auto s = channel_->Stats();
    auto o = Napi::Object::New(info.Env());
    o.Set("requests", Num(info.Env(), static_cast<double>(s.requests)));
    o.Set("inlineRequests", Num(info.Env(), static_cast<double>(s.inline_requests)));
    o.Set("poolWaits", Num(info.Env(), static_cast<double>(s.pool_waits)));
    o.Set("wakes", Num(info.Env(), static_cast<double>(s.wakes)));
    o.Set("maxQueue", Num(info.Env(), static_cast<double>(s.max_queue)));
    auto r = channel_->read_index().GetStats();
    o.Set("fastReads", Num(info.Env(), static_cast<double>(r.served)));
    o.Set("fastReadMisses", Num(info.Env(), static_cast<double>(r.missed)));
    o.Set("publishedFiles", Num(info.Env(), static_cast<double>(r.files)));
    o.Set("publishedChunks", Num(info.Env(), static_cast<double>(r.chunks)));
    o.Set("readAheadMarks", Num(info.Env(), static_cast<double>(r.marks)));
    o.Set("fastFlushes", Num(info.Env(), static_cast<double>(r.flushes)));
    o.Set("fileReads", Num(info.Env(), static_cast<double>(r.file_reads)));
    o.Set("fileReadMisses", Num(info.Env(), static_cast<double>(r.file_misses)));
    o.Set("splicedReads", Num(info.Env(), static_cast<double>(channel_->SplicedReads())));
    o.Set("publishedAttrs", Num(info.Env(), static_cast<double>(r.attrs)));
    o.Set("fastGetattrs", Num(info.Env(), static_cast<double>(r.attr_served)));
    o.Set("earlyWrites", Num(info.Env(), static_cast<double>(r.early_writes)));
    return o;
  }

  std::unique_ptr<Channel> channel_;
  Napi::Reference<Napi::ArrayBuffer> arena_ref_;
  Napi::ThreadSafeFunction tsfn_;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probeFuseDevice", Napi::Function::New(env, ProbeFuseDevice));
  exports.Set("openFuseDevice", Napi::Function::New(env, OpenFuseDevice));
  exports.Set("cloneFuseDevice", Napi::Function::New(env, CloneFuseDevice));
  exports.Set("mountFuse", Napi::Function::New(env, MountFuse));
  exports.Set("fusermountMount", Napi::Function::New(env, FusermountMount));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
  exports.Set("lockFile", Napi::Function::New(env, LockFile));
  exports.Set("redirectOutput", Napi::Function::New(env, RedirectOutput));
  exports.Set("releaseMapped", Napi::Function::New(env, ReleaseMapped));
  exports.Set("listXattrs", Napi::Function::New(env, ListXattrs));
  exports.Set("mallocInfo", Napi::Function::New(env, MallocInfo));
  exports.Set("getXattr", Napi::Function::New(env, GetXattr));
  exports.Set("peerUid", Napi::Function::New(env, PeerUid));
  exports.Set("syncfs", Napi::Function::New(env, Syncfs));
  exports.Set("putFile", Napi::Function::New(env, PutFile));
  exports.Set("retireFile", Napi::Function::New(env, RetireFile));
  exports.Set("NativeChannel", ChannelWrap::Define(env));
  exports.Set("recordSize", Num(env, kvfs::kRecordSize));
  exports.Set("inlineBody", Num(env, kvfs::kInlineBody));
  exports.Set("hintOpcode", Num(env, kvfs::kHintOpcode));
  exports.Set("answeredFlag", Num(env, kvfs::kAnswered));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvfs_native, Init)
