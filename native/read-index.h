// The read index: file data the filesystem core has published, from which reader threads answer READ
// requests themselves, without waking JavaScript (the hop that bounds small-read IOPS).
//
// Contract with the JavaScript side (src/fs/fuse/native-channel.ts, src/fs/published.ts):
//  - Publish(ino, size, chunk_size, idx, data, len) says: chunk idx of inode ino holds `len` bytes at `data`,
//    then zeros up to the chunk's end, and the file is `size` bytes long. data == nullptr, len 0 is a hole.
//    The bytes are immutable and JavaScript keeps them alive until it retracts them.
//    A chunk published with `mark` set reports itself once when a READ is served from it (Serve's *marked):
//    the sign that a sequential reader reached it, so that JavaScript publishes what comes next in time.
//  - PublishFile(ino, size, chunk_size, idx, path, len) says the same of bytes held by a file: its first `len`
//    bytes (an immutable blob file of the store). A reader opens and reads it itself, into its own scratch
//    buffer; a file that cannot be opened or read whole sends the READ to JavaScript instead. `mark` as above
//    (a sequential reader's window, published as files).
//  - SetSize changes the published size of a file (a write that grew it); Retract(ino, idx) takes one chunk
//    back, Retract(ino, -1) the whole file. Retract returns only when no reader still copies from what it
//    took back, so JavaScript may then drop or reuse that memory.
//  - SetClean(ino, true) says the file has nothing uncommitted: a FLUSH of it (close) is answered at once
//    (ServeFlush). JavaScript sets it false, synchronously, before it acknowledges any change to the file.
//  - BeginWrite(ino) says a reader answered a WRITE of ino before JavaScript applied it (channel.h, early
//    writes); EndWrite(ino) that JavaScript applied it (and retracted what it made stale). While any is
//    pending, nothing of ino is served here (READ, FLUSH): what is published may predate the write.
//  - Serve answers a READ when every chunk it covers (up to the file's size) is published; otherwise it
//    returns false and the request goes to JavaScript as usual. A READ at or past the end gets 0 bytes.
//  - PublishAttr(ino, body) says: a GETATTR of ino is answered with this reply body (fuse_attr_out, exactly as
//    JavaScript would write it) until RetractAttr(ino) or another PublishAttr. JavaScript publishes only
//    attributes that are current (directories of a single-mount volume: every change to them passes through
//    it), and replaces or retracts them before it acknowledges any change. Both return only when no reader
//    still writes a reply with the body it replaced, so that a GETATTR answered with old attributes is
//    answered before the change's own reply goes out. ServeGetattr copies the body for a reader.
//
// This is the one place in native/ that knows more of FUSE than the header's `len`: the READ opcode, the
// offset and size of fuse_read_in, and the 16-byte fuse_out_header of its reply. It is here because the hop
// from a reader thread to JavaScript and back bounds small reads: 4 KiB O_DIRECT random reads measured about
// 36K/s through JavaScript (libfuse 2 about 35K/s) and about 138K/s answered here (the C ceiling about 140K/s).
//
// Grace period: a reader looks a file up under the table's lock and takes its own busy lock before it lets
// go of the table; it holds the busy lock while it writes the reply. Retract removes under the table's lock,
// then takes and releases every reader's busy lock once: any reader that found the old data has finished.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <sys/uio.h>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace kvfs {

// A success fuse_out_header (16 bytes: len, error 0, unique) for a reply of len bytes in all.
inline void PutOutHeader(uint8_t* out, uint32_t len, uint64_t unique) {
  int32_t error = 0;
  memcpy(out, &len, 4);
  memcpy(out + 4, &error, 4);
  memcpy(out + 8, &unique, 8);
}

// Reads len bytes at off of the open file fd into out; false unless all of them were read.
bool PreadWhole(int fd, uint64_t off, uint8_t* out, uint64_t len);

class ReadIndex {
 public:
  explicit ReadIndex(size_t readers);

  void Publish(uint64_t ino, uint64_t size, uint32_t chunk_size, uint64_t idx, const uint8_t* data, uint32_t len,
               bool mark);
  void PublishFile(uint64_t ino, uint64_t size, uint32_t chunk_size, uint64_t idx, std::string path, uint32_t len,
                   bool mark);
  void SetSize(uint64_t ino, uint64_t size);
  void Retract(uint64_t ino, int64_t idx);

  // Builds the reply to READ(offset, size) of ino in iov (header first, in `header`, 16 bytes), up to max_iov
  // entries; bytes of published files are read into `scratch` (scratch_len bytes). Returns the number of
  // entries, holding `reader`'s busy lock (call Done after the writev), or 0 when the data is not all published
  // or a file could not be read (nothing is held). *marked is set to the index of a marked chunk the reply
  // uses (its mark is cleared), or -1.
  //
  // With `piece` (splice replies): when the reply's data is one piece of one published file, possibly followed by
  // zeros, that piece is not read: its file is opened (piece->fd, to close) and described in *piece, and iov[1]
  // (scratch) is where the caller reads it itself if it cannot splice it. Otherwise piece->fd is -1.
  struct Piece {
    int fd = -1;
    uint64_t off = 0;
    uint64_t len = 0;
  };
  int Serve(uint32_t reader, uint64_t ino, uint64_t unique, uint64_t offset, uint32_t size, uint8_t* header,
            struct iovec* iov, int max_iov, uint8_t* scratch, size_t scratch_len, int64_t* marked,
            Piece* piece = nullptr);
  void Done(uint32_t reader);
  // Done, for a reply whose piece (Serve's `piece`) could not be read after all: counted as a miss, not served.
  void PieceFailed(uint32_t reader);

  // the size of a fuse_attr_out (the GETATTR reply's body after its 16-byte header)
  static constexpr uint32_t kAttrOutSize = 104;
  void PublishAttr(uint64_t ino, const uint8_t* body);
  void RetractAttr(uint64_t ino);
  // Copies ino's published GETATTR reply body into out (kAttrOutSize bytes) and returns true holding `reader`'s
  // attribute lock (call AttrDone after the reply is written); false when none is published (nothing held).
  bool ServeGetattr(uint32_t reader, uint64_t ino, uint8_t* out);
  void AttrDone(uint32_t reader);

  void BeginWrite(uint64_t ino);
  void EndWrite(uint64_t ino);

  void SetClean(uint64_t ino, bool clean);
  // true when a FLUSH of ino may be answered with success now (nothing of it is uncommitted)
  bool ServeFlush(uint64_t ino);

  struct Stats {
    uint64_t files = 0;
    uint64_t chunks = 0;
    uint64_t served = 0;
    uint64_t missed = 0;
    uint64_t marks = 0;
    uint64_t flushes = 0;
    uint64_t file_reads = 0;
    uint64_t file_misses = 0;
    uint64_t attrs = 0;
    uint64_t attr_served = 0;
    uint64_t early_writes = 0;
  };
  Stats GetStats();

 private:
  struct Span {
    const uint8_t* data;
    uint32_t len;
    bool mark;
    // set: the bytes are the first len of this file (data is null)
    std::shared_ptr<const std::string> path;
  };
  struct File {
    uint64_t size = 0;
    uint32_t chunk_size = 0;
    std::unordered_map<uint64_t, Span> chunks;
  };

  void Put(uint64_t ino, uint64_t size, uint32_t chunk_size, uint64_t idx, Span span);

  std::mutex mu_;
  std::unordered_map<uint64_t, File> files_;
  uint64_t chunks_ = 0;
  uint64_t served_ = 0;
  uint64_t missed_ = 0;
  uint64_t marks_ = 0;
  uint64_t flushes_ = 0;
  uint64_t file_reads_ = 0;
  uint64_t file_misses_ = 0;
  std::unordered_set<uint64_t> clean_;
  // writes answered early and not yet applied by JavaScript, per inode
  std::unordered_map<uint64_t, uint32_t> pending_;
  uint64_t early_writes_ = 0;
  std::vector<std::unique_ptr<std::mutex>> busy_;
  // GETATTR reply bodies, and each reader's lock held while it writes one (the grace period of PublishAttr and
  // RetractAttr; apart from busy_, which a reader holds through file reads)
  std::unordered_map<uint64_t, std::array<uint8_t, kAttrOutSize>> attrs_;
  std::vector<std::unique_ptr<std::mutex>> attr_busy_;
  uint64_t attr_served_ = 0;
  void AttrGrace();
};

}  // namespace kvfs
