#include "fuse-dev.h"

#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

namespace kvfs {

int ProbeFuseDevice() {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  close(fd);
  return 0;
}

}  // namespace kvfs
