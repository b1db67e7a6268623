#include "channel.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

namespace kvfs {

namespace {

uint32_t U32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

void PutU32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }

// Reads exactly n bytes from fd (a pipe holding one whole request); -errno on failure.
ssize_t ReadFull(int fd, uint8_t* dst, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, dst + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return -EPIPE;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

}  // namespace

// One reader thread's transport: its /dev/fuse fd and its pipe.
class Reader {
 public:
  Reader(Channel* ch, uint32_t index, int fd, int pipe_r, int pipe_w)
      : ch_(ch), index_(index), fd_(fd), pipe_r_(pipe_r), pipe_w_(pipe_w) {
    int cap = fcntl(pipe_w_, F_GETPIPE_SZ);
    pipe_cap_ = cap > 0 ? static_cast<size_t>(cap) : 0;
  }

  void Run() {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(ch_->mu_);
        if (ch_->stopping_) break;
      }
      Record rec;
      int r = Next(&rec);
      if (r == -ENODEV || r == -EBADF) break;  // unmounted (or the channel closed the fd)
      if (r == -EINTR || r == -EAGAIN || r == -ENOENT) continue;
      if (r < 0) {
        // An unexpected error on the device: say so once in the record stream, then stop this reader.
        break;
      }
      if (r == 0) continue;
      ch_->Push(rec);
      // An early write is answered once its record is queued: every request the kernel sends after this
      // reply reaches JavaScript behind it.
      if (early_size_ >= 0) AnswerWrite(rec);
    }
    ch_->ReaderDone();
  }

 private:
  // Takes one request: splice it whole into the pipe, read its header, then its body into the right place.
  // Returns 1 with rec filled, 0 to skip, or -errno.
  int Next(Record* rec) {
    ssize_t n = splice(fd_, nullptr, pipe_w_, nullptr, ch_->pipe_size_, 0);
    if (n < 0) return -errno;
    if (n < kHeaderSize) {
      Drain(static_cast<size_t>(n));
      return 0;
    }
    uint8_t* b = rec->bytes;
    ssize_t h = ReadFull(pipe_r_, b, kHeaderSize);
    if (h < 0) return static_cast<int>(h);
    uint32_t len = U32(b);
    uint32_t body = static_cast<uint32_t>(n) - kHeaderSize;
    if (len != static_cast<uint32_t>(n)) {
      // The header disagrees with what the kernel moved: pass the header on with what we have; JS answers
      // with a typed parse error. Keep the pipe clean for the next request.
      body = 0;
      Drain(static_cast<size_t>(n) - kHeaderSize);
    }
    PutU32(b + 40, index_);
    PutU32(b + 44, body);
    early_size_ = -1;
    if (body <= static_cast<uint32_t>(kInlineBody)) {
      PutU32(b + 48, kInline);
      PutU32(b + 52, kInline);
      if (body) {
        ssize_t r = ReadFull(pipe_r_, b + 56, body);
        if (r < 0) return static_cast<int>(r);
      }
      if (ch_->fast_reads_) {
        uint32_t op = U32(b + 4);
        if (op == kFuseRead && body >= kReadInSize && ServeRead(b)) return 0;
        if (op == kFuseFlush && ServeFlush(b)) return 0;
        if (op == kFuseGetattr && ServeGetattr(b)) return 0;
      }
      TakeEarlyWrite(b, b + 56, body);
      return 1;
    }
    int cls;
    uint32_t off;
    bool tight = false;
    if (!ch_->TakeBuffer(body, &cls, &off, &tight)) {
      // Stopping, or no class can hold the body: drop the body; JS answers from the header alone.
      Drain(body);
      PutU32(b + 44, 0);
      PutU32(b + 48, kInline);
      PutU32(b + 52, kInline);
      return 1;
    }
    PutU32(b + 48, off);
    PutU32(b + 52, static_cast<uint32_t>(cls));
    ssize_t r = ReadFull(pipe_r_, ch_->arena_ + off, body);
    if (r < 0) return static_cast<int>(r);
    // An early answer lets the kernel send the next write at once, and this one keeps its buffer until
    // JavaScript applies it: only while the pool has room. When the buffer was the last of its class (or had to
    // be waited for), JavaScript answers after applying it, and the writers wait as they would without early
    // writes (a 4 MiB pool under 16 writers otherwise filled with answered writes and hung).
    if (!tight) TakeEarlyWrite(b, ch_->arena_ + off, body);
    return 1;
  }

  // Early writes: a WRITE is answered by this thread, before JavaScript applies it, when the channel allows
  // it and the request is well formed with an end JavaScript accepts (2^53 - 1: beyond, JS answers EFBIG).
  // The record is flagged (kAnswered in the reader field) so that JS applies it without a reply, reports a
  // failure at the file's next FLUSH or FSYNC, and calls EndWrite. Until then the read index serves nothing
  // of the file (BeginWrite), so no READ or FLUSH answered here can pass the write.
  void TakeEarlyWrite(uint8_t* b, const uint8_t* body, uint32_t len) {
    if (!ch_->early_writes_ || U32(b + 4) != kFuseWrite || len < kWriteInSize) return;
    uint64_t offset;
    memcpy(&offset, body + 8, 8);
    uint32_t size = U32(body + 16);
    if (size != len - kWriteInSize || offset > kMaxEnd - size) return;
    uint64_t nodeid;
    memcpy(&nodeid, b + 16, 8);
    ch_->read_index_.BeginWrite(nodeid);
    PutU32(b + 40, index_ | kAnswered);
    early_size_ = size;
  }

  void AnswerWrite(const Record& rec) {
    uint64_t unique;
    memcpy(&unique, rec.bytes + 8, 8);
    uint8_t out[24];
    PutOutHeader(out, sizeof out, unique);
    PutU32(out + 16, static_cast<uint32_t>(early_size_));  // fuse_write_out: size, padding
    PutU32(out + 20, 0);
    struct iovec iov = {out, sizeof out};
    ch_->Reply(index_, &iov, 1);
    early_size_ = -1;
  }

  // A READ of published data is answered here, without JavaScript (read-index.h). True when answered.
  bool ServeRead(const uint8_t* b) {
    uint64_t nodeid, unique, offset;
    uint32_t size;
    memcpy(&unique, b + 8, 8);
    memcpy(&nodeid, b + 16, 8);
    memcpy(&offset, b + 56 + 8, 8);  // fuse_read_in: fh, offset, size, ...
    memcpy(&size, b + 56 + 16, 4);
    int64_t marked;
    ReadIndex::Piece piece;
    int n = ch_->read_index_.Serve(index_, nodeid, unique, offset, size, reply_header_, iov_, kMaxIov,
                                   file_buf_.data(), file_buf_.size(), &marked, &piece);
    if (n == 0) return false;
    if (piece.fd >= 0) {
      bool sent = SpliceReply(piece, n);
      // could not splice it: the piece is read here, and written as the rest are
      bool read = sent || PreadWhole(piece.fd, piece.off, static_cast<uint8_t*>(iov_[1].iov_base), piece.len);
      close(piece.fd);
      if (!read) {
        // the file could not be read: JavaScript answers
        ch_->read_index_.PieceFailed(index_);
        return false;
      }
      if (sent) {
        n = 0;
        ch_->spliced_reads_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    // Errors other than an interrupted request (ENODEV at unmount) show at the next splice.
    if (n) ch_->Reply(index_, iov_, n);
    ch_->read_index_.Done(index_);
    if (marked >= 0) {
      // A sequential reader reached a marked chunk: tell JS (a hint record, no reply wanted).
      Record hint;
      uint8_t* h = hint.bytes;
      memset(h, 0, 64);
      PutU32(h, kHeaderSize);
      PutU32(h + 4, kHintOpcode);
      memcpy(h + 16, &nodeid, 8);
      PutU32(h + 40, index_);
      PutU32(h + 44, 8);
      PutU32(h + 48, kInline);
      PutU32(h + 52, kInline);
      memcpy(h + 56, &marked, 8);
      ch_->Push(hint);
    }
    return true;
  }

  // The reply of a READ whose data is one piece of a published file (ReadIndex::Serve): the header into this
  // reader's pipe, the file's pages after it with splice (references to the page cache, no copy), any zeros after
  // them, then the whole reply from the pipe into the device with splice, where the kernel copies the pages once
  // into the reader's pages. The pread into a scratch buffer that writev then copies again is saved: one copy of
  // the data instead of two. False, with the pipe emptied, when any step fails or the reply might not fit the
  // pipe, or the piece is small (kSpliceMin; the caller then reads the piece and writes the reply as usual); an
  // interrupted request (ENOENT) counts as sent.
  bool SpliceReply(const ReadIndex::Piece& piece, int n) {
    size_t zeros = n == 3 ? iov_[2].iov_len : 0;
    size_t total = 16 + piece.len + zeros;
    // pipe slots: the header's, the file's pages, the zeros' pages, and one spare
    size_t slots = 1 + (piece.off % 4096 + piece.len + 4095) / 4096 + (zeros + 4095) / 4096 + 1;
    if (!ch_->splice_reads_ || piece.len < kSpliceMin || slots * 4096 > pipe_cap_ || total > UINT32_MAX) return false;
    bool ok = write(pipe_w_, iov_[0].iov_base, 16) == 16;
    loff_t off = static_cast<loff_t>(piece.off);
    for (size_t left = piece.len; ok && left > 0;) {
      ssize_t r = splice(piece.fd, &off, pipe_w_, nullptr, left, SPLICE_F_NONBLOCK);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) ok = false;
      else left -= static_cast<size_t>(r);
    }
    if (ok && zeros) ok = write(pipe_w_, iov_[2].iov_base, zeros) == static_cast<ssize_t>(zeros);
    if (ok) {
      for (;;) {
        ssize_t r = splice(pipe_r_, nullptr, fd_, nullptr, total, 0);
        if (r < 0 && errno == EINTR) continue;
        ok = r == static_cast<ssize_t>(total) || (r < 0 && errno == ENOENT);
        break;
      }
    }
    // (a whole reply spliced into the device leaves the pipe empty)
    int left = 0;
    if (!ok && ioctl(pipe_r_, FIONREAD, &left) == 0 && left > 0) Drain(static_cast<size_t>(left));
    return ok;
  }

  // A FLUSH (close) of a file with nothing uncommitted is answered here (read-index.h). True when answered.
  bool ServeFlush(const uint8_t* b) {
    uint64_t nodeid, unique;
    memcpy(&unique, b + 8, 8);
    memcpy(&nodeid, b + 16, 8);
    if (!ch_->read_index_.ServeFlush(nodeid)) return false;
    uint8_t out[16];
    PutOutHeader(out, sizeof out, unique);
    struct iovec iov = {out, sizeof out};
    ch_->Reply(index_, &iov, 1);
    return true;
  }

  // A GETATTR of an inode whose attributes the core published is answered here (read-index.h). True when
  // answered.
  bool ServeGetattr(const uint8_t* b) {
    uint64_t nodeid, unique;
    memcpy(&unique, b + 8, 8);
    memcpy(&nodeid, b + 16, 8);
    uint8_t out[16 + ReadIndex::kAttrOutSize];
    if (!ch_->read_index_.ServeGetattr(index_, nodeid, out + 16)) return false;
    PutOutHeader(out, sizeof out, unique);
    struct iovec iov = {out, sizeof out};
    ch_->Reply(index_, &iov, 1);
    ch_->read_index_.AttrDone(index_);
    return true;
  }

  void Drain(size_t n) {
    uint8_t scratch[4096];
    while (n > 0) {
      ssize_t r = read(pipe_r_, scratch, n < sizeof scratch ? n : sizeof scratch);
      if (r <= 0) {
        if (r < 0 && errno == EINTR) continue;
        return;
      }
      n -= static_cast<size_t>(r);
    }
  }

  static constexpr int kMaxIov = 1024;
  // a piece smaller than this is read and written (pread + writev): for a few pages the splices' extra calls
  // cost more than the copy they save
  static constexpr uint64_t kSpliceMin = 32 << 10;
  static constexpr uint32_t kFuseRead = 15;
  static constexpr uint32_t kFuseFlush = 25;
  static constexpr uint32_t kFuseGetattr = 3;
  static constexpr uint32_t kReadInSize = 40;
  static constexpr uint32_t kFuseWrite = 16;
  static constexpr uint32_t kWriteInSize = 40;
  static constexpr uint64_t kMaxEnd = (1ull << 53) - 1;
  // the size an early write is answered with once its record is queued (-1: none)
  int64_t early_size_ = -1;
  Channel* ch_;
  uint8_t reply_header_[16];
  struct iovec iov_[kMaxIov];
  // bytes of published files for one reply (a READ is at most 1 MiB: max_read), one per reader
  std::vector<uint8_t> file_buf_ = std::vector<uint8_t>(1u << 20);
  uint32_t index_;
  int fd_;
  int pipe_r_;
  int pipe_w_;
  // the pipe's size in bytes (F_GETPIPE_SZ): a spliced reply must fit it whole (SpliceReply)
  size_t pipe_cap_ = 0;
};

Channel::Channel(std::vector<int> fds, uint8_t* arena, size_t arena_len, std::vector<uint32_t> class_sizes,
                 size_t pipe_size, std::function<void()> wake)
    : fds_(std::move(fds)),
      arena_(arena),
      arena_len_(arena_len),
      class_sizes_(std::move(class_sizes)),
      pipe_size_(pipe_size),
      max_body_(class_sizes_.empty() ? 0 : class_sizes_.back()),
      wake_(std::move(wake)),
      stock_(class_sizes_.size()),
      read_index_(fds_.size()) {}

Channel::~Channel() {
  Stop();
  for (int p : pipes_) close(p);
}

int Channel::Start() {
  for (size_t i = 0; i < fds_.size(); i++) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return -errno;
    pipes_.push_back(p[0]);
    pipes_.push_back(p[1]);
    // The pipe must hold the largest request whole. Only CAP_SYS_RESOURCE may exceed fs.pipe-max-size; the
    // caller learns the size it got (PipeSize) and asks the kernel for writes that fit it.
    int got = fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(pipe_size_));
    if (got < 0) return -errno;
    if (static_cast<size_t>(got) < pipe_size_) return -ENOBUFS;
  }
  std::lock_guard<std::mutex> lock(mu_);
  running_ = static_cast<int>(fds_.size());
  for (size_t i = 0; i < fds_.size(); i++) {
    int fd = fds_[i], pr = pipes_[2 * i], pw = pipes_[2 * i + 1];
    threads_.emplace_back([this, i, fd, pr, pw] {
      Reader r(this, static_cast<uint32_t>(i), fd, pr, pw);
      r.Run();
    });
  }
  return 0;
}

bool Channel::TakeBuffer(uint32_t body_len, int* cls, uint32_t* offset, bool* tight) {
  std::unique_lock<std::mutex> lock(mu_);
  int first = -1;
  for (size_t c = 0; c < class_sizes_.size(); c++) {
    if (class_sizes_[c] >= body_len) {
      first = static_cast<int>(c);
      break;
    }
  }
  if (first < 0) return false;
  bool waited = false;
  for (;;) {
    if (stopping_) return false;
    for (size_t c = static_cast<size_t>(first); c < class_sizes_.size(); c++) {
      if (!stock_[c].empty()) {
        *cls = static_cast<int>(c);
        *offset = stock_[c].back();
        stock_[c].pop_back();
        if (tight) *tight = waited || stock_[c].empty();
        return true;
      }
    }
    // Nothing fitting is stocked: ask JS for the right class and wait. The kernel keeps the backlog.
    if (!waited) {
      stats_.pool_waits++;
      waited = true;
    }
    needs_ |= 1u << first;
    bool call = !wake_pending_;
    wake_pending_ = true;
    if (call) {
      stats_.wakes++;
      lock.unlock();
      wake_();
      lock.lock();
    }
    stocked_.wait(lock);
  }
}

void Channel::Push(const Record& r) {
  bool call;
  {
    std::unique_lock<std::mutex> lock(mu_);
    room_.wait(lock, [this] { return queue_.size() < kMaxQueue || stopping_; });
    queue_.push_back(r);
    queued_.store(queue_.size(), std::memory_order_release);
    stats_.requests++;
    if (U32(r.bytes + 48) == kInline) stats_.inline_requests++;
    if (queue_.size() > stats_.max_queue) stats_.max_queue = queue_.size();
    call = !wake_pending_;
    wake_pending_ = true;
    if (call) stats_.wakes++;
  }
  if (call) wake_();
}

void Channel::ReaderDone() {
  bool call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_--;
    call = !wake_pending_;
    wake_pending_ = true;
  }
  if (call) wake_();
}

int Channel::Poll(uint8_t* out, int max, bool* closed, uint32_t* needs) {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  while (n < max && !queue_.empty()) {
    memcpy(out + static_cast<size_t>(n) * kRecordSize, queue_.front().bytes, kRecordSize);
    queue_.pop_front();
    n++;
  }
  queued_.store(queue_.size(), std::memory_order_release);
  *needs = needs_;
  needs_ = 0;
  *closed = running_ == 0 && queue_.empty();
  // Clear the pending flag only when JS has everything: a reader that pushes after this wakes JS again.
  if (queue_.empty()) wake_pending_ = false;
  if (n) room_.notify_all();
  return n;
}

bool Channel::Spin(uint32_t us) {
  auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (int i = 0;; i++) {
    if (queued_.load(std::memory_order_acquire) > 0) return true;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

int Channel::Stock(int cls, uint32_t offset) {
  if (cls < 0 || static_cast<size_t>(cls) >= class_sizes_.size()) return -EINVAL;
  if (static_cast<size_t>(offset) + class_sizes_[cls] > arena_len_) return -EINVAL;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stock_[cls].push_back(offset);
  }
  stocked_.notify_all();
  return 0;
}

int64_t Channel::UnstockOne(int cls) {
  if (cls < 0 || static_cast<size_t>(cls) >= stock_.size()) return -1;
  std::lock_guard<std::mutex> lock(mu_);
  if (stock_[cls].empty()) return -1;
  uint32_t off = stock_[cls].front();
  stock_[cls].erase(stock_[cls].begin());
  return off;
}

void Channel::Unstock(std::vector<std::pair<int, uint32_t>>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t c = 0; c < stock_.size(); c++) {
    for (uint32_t off : stock_[c]) out->emplace_back(static_cast<int>(c), off);
    stock_[c].clear();
  }
}

ssize_t Channel::Reply(uint32_t reader, const struct iovec* iov, int iovcnt) {
  if (reader >= fds_.size()) return -EINVAL;
  for (;;) {
    ssize_t n = writev(fds_[reader], iov, iovcnt);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == ENOENT) return 0;  // the request was interrupted and is gone: not an error
    return -errno;
  }
}

void Channel::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stocked_.notify_all();
  room_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

ChannelStats Channel::Stats() {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace kvfs
