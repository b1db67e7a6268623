#include "read-index.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace kvfs {

namespace {

// Zeros for holes and for the bytes past a short chunk (never written: the pages stay the kernel's zero page).
constexpr size_t kZeroBytes = (1u << 20) + 4096;
uint8_t zeros[kZeroBytes];

// Reads len bytes at off of the file at path into out; false unless all of them were read.
bool ReadWhole(const std::string& path, uint64_t off, uint8_t* out, uint64_t len) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = PreadWhole(fd, off, out, len);
  close(fd);
  return ok;
}

// A piece of a reply that a reader reads from a published file.
struct FilePiece {
  std::shared_ptr<const std::string> path;
  uint64_t off;
  uint64_t len;
  uint8_t* out;
};
constexpr int kMaxFilePieces = 64;

}  // namespace

bool PreadWhole(int fd, uint64_t off, uint8_t* out, uint64_t len) {
  uint64_t got = 0;
  while (got < len) {
    ssize_t r = pread(fd, out + got, len - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<uint64_t>(r);
  }
  return true;
}

ReadIndex::ReadIndex(size_t readers) {
  for (size_t i = 0; i < readers; i++) {
    busy_.push_back(std::make_unique<std::mutex>());
    attr_busy_.push_back(std::make_unique<std::mutex>());
  }
}

void ReadIndex::Publish(uint64_t ino, uint64_t size, uint32_t chunk_size, uint64_t idx, const uint8_t* data,
                        uint32_t len, bool mark) {
  Put(ino, size, chunk_size, idx, Span{data, len, mark, nullptr});
}

void ReadIndex::PublishFile(uint64_t ino, uint64_t size, uint32_t chunk_size, uint64_t idx, std::string path,
                            uint32_t len, bool mark) {
  Put(ino, size, chunk_size, idx, Span{nullptr, len, mark, std::make_shared<const std::string>(std::move(path))});
}

void ReadIndex::Put(uint64_t ino, uint64_t size, uint32_t chunk_size, uint64_t idx, Span span) {
  std::lock_guard<std::mutex> lock(mu_);
  File& f = files_[ino];
  if (f.chunk_size != chunk_size) {
    chunks_ -= f.chunks.size();
    f.chunks.clear();
    f.chunk_size = chunk_size;
  }
  f.size = size;
  if (f.chunks.insert_or_assign(idx, std::move(span)).second) chunks_++;
}

void ReadIndex::SetSize(uint64_t ino, uint64_t size) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = files_.find(ino);
  if (it != files_.end()) it->second.size = size;
}

void ReadIndex::Retract(uint64_t ino, int64_t idx) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(ino);
    if (it == files_.end()) return;
    if (idx < 0) {
      chunks_ -= it->second.chunks.size();
      files_.erase(it);
    } else if (it->second.chunks.erase(static_cast<uint64_t>(idx))) {
      chunks_--;
    } else {
      return;  // nothing of it was published: no reader can be using it
    }
  }
  // The grace period: a reader that found the data holds its busy lock until its reply is written.
  for (auto& m : busy_) {
    m->lock();
    m->unlock();
  }
}

int ReadIndex::Serve(uint32_t reader, uint64_t ino, uint64_t unique, uint64_t offset, uint32_t size,
                     uint8_t* header, struct iovec* iov, int max_iov, uint8_t* scratch, size_t scratch_len,
                     int64_t* marked, Piece* piece) {
  *marked = -1;
  if (piece) piece->fd = -1;
  if (reader >= busy_.size() || max_iov < 2) return 0;
  std::unique_lock<std::mutex> lock(mu_);
  auto it = files_.find(ino);
  if (it == files_.end() || pending_.count(ino)) {
    missed_++;
    return 0;
  }
  File& f = it->second;
  Span* mark = nullptr;
  uint64_t mark_idx = 0;
  uint64_t end = offset + size;
  if (end > f.size) end = f.size;
  int n = 1;
  uint64_t total = 0;
  FilePiece pieces[kMaxFilePieces];
  int np = 0;
  size_t used = 0;
  for (uint64_t pos = offset; pos < end;) {
    uint64_t idx = pos / f.chunk_size;
    uint64_t base = idx * f.chunk_size;
    uint64_t to = base + f.chunk_size < end ? base + f.chunk_size : end;
    auto c = f.chunks.find(idx);
    if (c == f.chunks.end() || n + 2 > max_iov) {
      missed_++;
      return 0;
    }
    if (c->second.mark) {
      mark = &c->second;
      mark_idx = idx;
    }
    uint64_t from = pos - base, upto = to - base;
    uint64_t have = c->second.len > from ? (c->second.len < upto ? c->second.len : upto) - from : 0;
    if (have && c->second.path) {
      if (np == kMaxFilePieces || used + have > scratch_len) {
        missed_++;
        return 0;
      }
      pieces[np++] = FilePiece{c->second.path, from, have, scratch + used};
      iov[n].iov_base = scratch + used;
      iov[n].iov_len = have;
      used += have;
      n++;
    } else if (have) {
      iov[n].iov_base = const_cast<uint8_t*>(c->second.data + from);
      iov[n].iov_len = have;
      n++;
    }
    if (have < upto - from) {
      if (upto - from - have > kZeroBytes) {
        missed_++;
        return 0;
      }
      // zeros past the chunk's bytes (a hole, or the tail of a short chunk); a READ is at most kZeroBytes
      iov[n].iov_base = zeros;
      iov[n].iov_len = upto - from - have;
      n++;
    }
    total += upto - from;
    pos = to;
  }
  PutOutHeader(header, static_cast<uint32_t>(16 + total), unique);
  iov[0].iov_base = header;
  iov[0].iov_len = 16;
  served_++;
  if (mark) {
    mark->mark = false;
    marks_++;
    *marked = static_cast<int64_t>(mark_idx);
  }
  busy_[reader]->lock();
  if (np == 0) return n;
  // Files are read outside the table's lock (the busy lock still keeps Retract waiting, and each piece holds
  // its path): other readers and JavaScript's publishes go on meanwhile.
  lock.unlock();
  bool ok = true;
  if (piece && np == 1 && iov[1].iov_base == pieces[0].out && (n == 2 || (n == 3 && iov[2].iov_base == zeros))) {
    piece->fd = open(pieces[0].path->c_str(), O_RDONLY | O_CLOEXEC);
    if (piece->fd >= 0) {
      piece->off = pieces[0].off;
      piece->len = pieces[0].len;
      std::lock_guard<std::mutex> again(mu_);
      file_reads_++;
      return n;
    }
    ok = false;
  }
  for (int i = 0; i < np && ok; i++) ok = ReadWhole(*pieces[i].path, pieces[i].off, pieces[i].out, pieces[i].len);
  if (ok) {
    std::lock_guard<std::mutex> again(mu_);
    file_reads_++;
    return n;
  }
  busy_[reader]->unlock();
  std::lock_guard<std::mutex> again(mu_);
  served_--;
  missed_++;
  file_misses_++;
  return 0;
}

void ReadIndex::Done(uint32_t reader) { busy_[reader]->unlock(); }

void ReadIndex::PieceFailed(uint32_t reader) {
  busy_[reader]->unlock();
  std::lock_guard<std::mutex> lock(mu_);
  served_--;
  file_reads_--;
  missed_++;
  file_misses_++;
}

void ReadIndex::PublishAttr(uint64_t ino, const uint8_t* body) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    memcpy(attrs_[ino].data(), body, kAttrOutSize);
  }
  AttrGrace();
}

void ReadIndex::RetractAttr(uint64_t ino) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!attrs_.erase(ino)) return;
  }
  AttrGrace();
}

// Any reader that copied a body before the change has written its reply once this returns.
void ReadIndex::AttrGrace() {
  for (auto& m : attr_busy_) {
    m->lock();
    m->unlock();
  }
}

bool ReadIndex::ServeGetattr(uint32_t reader, uint64_t ino, uint8_t* out) {
  if (reader >= attr_busy_.size()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = attrs_.find(ino);
  if (it == attrs_.end()) return false;
  // taken under the table's lock: a PublishAttr or RetractAttr that follows waits for this reply
  attr_busy_[reader]->lock();
  memcpy(out, it->second.data(), kAttrOutSize);
  attr_served_++;
  return true;
}

void ReadIndex::AttrDone(uint32_t reader) { attr_busy_[reader]->unlock(); }

void ReadIndex::SetClean(uint64_t ino, bool clean) {
  std::lock_guard<std::mutex> lock(mu_);
  if (clean) {
    clean_.insert(ino);
  } else {
    clean_.erase(ino);
  }
}

void ReadIndex::BeginWrite(uint64_t ino) {
  std::lock_guard<std::mutex> lock(mu_);
  pending_[ino]++;
  early_writes_++;
}

void ReadIndex::EndWrite(uint64_t ino) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(ino);
  if (it != pending_.end() && --it->second == 0) pending_.erase(it);
}

bool ReadIndex::ServeFlush(uint64_t ino) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!clean_.count(ino) || pending_.count(ino)) return false;
  flushes_++;
  return true;
}

ReadIndex::Stats ReadIndex::GetStats() {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s;
  s.files = files_.size();
  s.chunks = chunks_;
  s.served = served_;
  s.missed = missed_;
  s.marks = marks_;
  s.flushes = flushes_;
  s.file_reads = file_reads_;
  s.file_misses = file_misses_;
  s.attrs = attrs_.size();
  s.attr_served = attr_served_;
  s.early_writes = early_writes_;
  return s;
}

}  // namespace kvfs
