#include "blob-io.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kvfs {

int PutFile(const std::string& spare, const std::string& path, const uint8_t* data, size_t len) {
  bool reused = !spare.empty() && rename(spare.c_str(), path.c_str()) == 0;
  if (!spare.empty() && !reused && errno != ENOENT) return -errno;
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (reused ? 0 : O_TRUNC), 0600);
  if (fd < 0) {
    int err = errno;
    if (reused) unlink(path.c_str());
    return -err;
  }
  int err = 0;
  struct stat st;
  if (reused && fstat(fd, &st) < 0) err = errno;
  size_t done = 0;
  while (!err && done < len) {
    ssize_t n = pwrite(fd, data + done, len - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) err = errno;
    else if (n == 0) err = EIO;
    else done += static_cast<size_t>(n);
  }
  if (!err && reused && static_cast<uint64_t>(st.st_size) > len && ftruncate(fd, static_cast<off_t>(len)) < 0) err = errno;
  if (close(fd) < 0 && !err && errno != EINTR) err = errno;
  if (err) {
    unlink(path.c_str());
    return -err;
  }
  return 0;
}

int64_t RetireFile(const std::string& path, const std::string& spare) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) return -errno;
  if (spare.empty() ? unlink(path.c_str()) < 0 : rename(path.c_str(), spare.c_str()) < 0) return -errno;
  return static_cast<int64_t>(st.st_size);
}

}  // namespace kvfs
