// The FUSE channel: reader threads that take requests from /dev/fuse, and the reply path.
//
// Contract with the JavaScript side (src/fs/fuse/native-channel.ts):
//  - Memory. Request bodies land in buffers of the JS buffer pool's arena (an ArrayBuffer the channel keeps
//    a reference to). JS "stocks" the channel with free buffers per size class (offset + size). A reader takes
//    the smallest stocked buffer that fits a body; when no fitting class is stocked it flags the class as
//    needed, wakes JS, and waits: the kernel keeps the backlog, memory stays bounded. Bodies small enough
//    (kInlineBody bytes) travel inside the record itself and take no pool buffer at all.
//  - Records. Each request becomes one fixed-size record: the 40-byte fuse_in_header, the reader index, the
//    body's location (inline, or the pool offset), and the inline body. Readers append records to a queue
//    and wake JS once per batch: only the reader that finds no wake pending calls into JS. JS copies up to
//    `max` records into its batch area with Poll(), which clears the pending flag when the queue is empty.
//  - Replies. Reply(reader, iovecs) writes one reply with one writev on the fd of the reader that read the
//    request (a cloned /dev/fuse fd answers only the requests read from it). ENOENT (the request was
//    interrupted) is not an error.
//  - Fast reads. A READ whose data the core published in the read index (read-index.h) is answered by the
//    reader thread itself and never reaches JS; the rest go to JS as usual. When such a READ used a marked
//    chunk, the reader queues a hint record (opcode kHintOpcode) so that JS publishes what comes next. A
//    GETATTR of an inode whose attributes the core published, and a FLUSH of a file with nothing uncommitted,
//    are answered the same way.
//  - Early writes (EnableEarlyWrites). A well-formed WRITE is answered by its reader as soon as its record is
//    queued, flagged kAnswered in the record's reader field: JS applies it in order and sends no reply. The
//    caller takes on reporting a write that fails (at the file's next FLUSH or FSYNC) and calls
//    ReadIndex::EndWrite for each such record once applied. Pool buffers stay held until JS is done with them,
//    so what is answered and not yet applied stays bounded by the pool.
//  - End. ENODEV from the device means unmounted: readers stop, and JS is woken with the closed flag set.
//
// Transport: each reader moves one whole request into its own pipe with splice, reads the header from the
// pipe, then the body into the right buffer. The transport is the Reader class alone; FUSE over io_uring
// would replace it without changing records, stocking or replies.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <sys/uio.h>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "read-index.h"

namespace kvfs {

constexpr int kHeaderSize = 40;
constexpr int kRecordSize = 256;
constexpr int kInlineBody = kRecordSize - 56;  // 200 bytes
constexpr uint32_t kInline = 0xffffffffu;
constexpr int kMaxClasses = 8;
constexpr size_t kMaxQueue = 1024;
// The opcode of a hint record (not a request: no reply): a fast read used a marked chunk (read-index.h).
// Its header carries the inode in nodeid, its 8-byte body the chunk index.
constexpr uint32_t kHintOpcode = 0xffffff01u;
// Set in a record's reader field: the request was answered already (an early write).
constexpr uint32_t kAnswered = 0x80000000u;

// The layout of one record (little-endian), as JS reads it:
//   [0, 40)    fuse_in_header as the kernel sent it
//   [40, 44)   u32 reader index (the fd to answer on), | kAnswered for an early write
//   [44, 48)   u32 body length
//   [48, 52)   u32 body location: kInline, or the buffer's offset in the arena
//   [52, 56)   u32 size class of that buffer (kInline for inline)
//   [56, 256)  the body when inline
struct Record {
  uint8_t bytes[kRecordSize];
};

struct ChannelStats {
  uint64_t requests = 0;
  uint64_t inline_requests = 0;
  uint64_t pool_waits = 0;
  uint64_t wakes = 0;
  uint64_t max_queue = 0;
};

class Channel {
 public:
  // fds: the session fd and one clone per extra reader. arena: base of the pool's memory, arena_len its size.
  // class_sizes: the pool's size classes, ascending. wake: called (from any thread) when JS should Poll.
  Channel(std::vector<int> fds, uint8_t* arena, size_t arena_len, std::vector<uint32_t> class_sizes,
          size_t pipe_size, std::function<void()> wake);
  ~Channel();

  // Starts the reader threads. Returns 0 or -errno (pipes could not be made large enough, ...).
  int Start();
  // Copies up to max records into out; returns how many. Sets *closed once every reader has stopped and
  // the queue is empty; *needs gets a bit per size class that a reader waits for.
  int Poll(uint8_t* out, int max, bool* closed, uint32_t* needs);
  // Waits up to us microseconds, on the CPU (no sleep), for a record in the queue; true when one is there. A
  // caller with nothing else to do calls it right after a reply: the next request of a caller that waits for
  // each answer arrives within tens of microseconds, and a thread that slept costs a wake-up (15-20 us here).
  bool Spin(uint32_t us);
  // Adds a free buffer of size class cls at offset to the stock. Returns 0 or -EINVAL.
  int Stock(int cls, uint32_t offset);
  // Takes back one stocked buffer of class cls: its offset, or -1 when none is stocked (a reader took it).
  int64_t UnstockOne(int cls);
  // Takes back every stocked buffer (their offsets are appended to out): used at shutdown.
  void Unstock(std::vector<std::pair<int, uint32_t>>* out);
  // One reply: writev of the iovecs on the reader's fd. Returns bytes written or -errno (ENOENT ignored: 0).
  ssize_t Reply(uint32_t reader, const struct iovec* iov, int iovcnt);
  // Asks readers to stop (they end at the next request or at unmount) and joins them.
  void Stop();
  ChannelStats Stats();
  uint64_t SplicedReads() const { return spliced_reads_.load(std::memory_order_relaxed); }
  // The published file data readers answer READ requests from (read-index.h). Off until EnableFastReads.
  ReadIndex& read_index() { return read_index_; }
  void EnableFastReads(bool on) { fast_reads_.store(on); }
  void EnableEarlyWrites(bool on) { early_writes_.store(on); }
  // READs answered from one published file get a spliced reply (Reader::SpliceReply); on by default
  void EnableSpliceReads(bool on) { splice_reads_.store(on); }
  size_t max_body() const { return max_body_; }

 private:
  friend class Reader;
  // blocks while nothing fits; *tight (when given): the buffer had to be waited for, or was its class's last in stock
  bool TakeBuffer(uint32_t body_len, int* cls, uint32_t* offset, bool* tight = nullptr);
  void Push(const Record& r);
  void ReaderDone();

  std::vector<int> fds_;
  uint8_t* arena_;
  size_t arena_len_;
  std::vector<uint32_t> class_sizes_;
  size_t pipe_size_;
  size_t max_body_;
  std::function<void()> wake_;

  std::mutex mu_;
  std::condition_variable stocked_;
  // Readers wait while the queue holds kMaxQueue records: past that the kernel keeps the backlog.
  std::condition_variable room_;
  std::deque<Record> queue_;
  // queue_.size(), readable without mu_ (Spin)
  std::atomic<size_t> queued_{0};
  std::vector<std::vector<uint32_t>> stock_;
  uint32_t needs_ = 0;
  bool wake_pending_ = false;
  bool stopping_ = false;
  int running_ = 0;
  ChannelStats stats_;
  std::vector<std::thread> threads_;
  std::vector<int> pipes_;  // read end, write end per reader
  ReadIndex read_index_;
  std::atomic<bool> fast_reads_{false};
  std::atomic<bool> early_writes_{false};
  // READs answered with a spliced reply (Reader::SpliceReply)
  std::atomic<uint64_t> spliced_reads_{0};
  std::atomic<bool> splice_reads_{true};
};

}  // namespace kvfs
