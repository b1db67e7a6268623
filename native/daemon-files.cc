#include "daemon-files.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

namespace kvfs {

int LockFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return -errno;
  int r;
  do {
    r = flock(fd, LOCK_EX | LOCK_NB);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

int RedirectOutput(const std::string& path) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return -errno;
  int e = 0;
  if (dup2(fd, 1) < 0 || dup2(fd, 2) < 0) e = errno;
  close(fd);
  return -e;
}

long PeerUid(int fd) {
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -errno;
  return static_cast<long>(cred.uid);
}

}  // namespace kvfs
