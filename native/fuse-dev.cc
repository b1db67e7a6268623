#include "fuse-dev.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <linux/fuse.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace kvfs {

int ProbeFuseDevice() {
  int fd = OpenFuseDevice();
  if (fd < 0) return fd;
  close(fd);
  return 0;
}

int OpenFuseDevice() {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

int CloneFuseDevice(int session_fd) {
  int fd = OpenFuseDevice();
  if (fd < 0) return fd;
  uint32_t src = static_cast<uint32_t>(session_fd);
  if (ioctl(fd, FUSE_DEV_IOC_CLONE, &src) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

int MountFuse(int fd, const std::string& mountpoint, const std::string& fstype, const std::string& source,
              const std::string& options, unsigned long flags) {
  char base[128];
  snprintf(base, sizeof base, "fd=%d,rootmode=40000,user_id=%u,group_id=%u", fd, getuid(), getgid());
  std::string opts = base;
  if (!options.empty()) opts += "," + options;
  if (mount(source.c_str(), mountpoint.c_str(), fstype.c_str(), flags, opts.c_str()) < 0) return -errno;
  return 0;
}

int FusermountMount(const std::string& mountpoint, const std::string& options) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return -errno;
  char commfd[32];
  snprintf(commfd, sizeof commfd, "_FUSE_COMMFD=%d", sv[0]);
  // The child gets sv[0] (not close-on-exec); we keep sv[1].
  fcntl(sv[1], F_SETFD, FD_CLOEXEC);
  std::vector<std::string> env_store;
  std::vector<char*> envp;
  for (char** e = environ; *e; e++) {
    if (strncmp(*e, "_FUSE_COMMFD=", 13) != 0) envp.push_back(*e);
  }
  envp.push_back(commfd);
  envp.push_back(nullptr);
  std::string o = options;
  const char* argv[] = {"fusermount3", "-o", o.c_str(), "--", mountpoint.c_str(), nullptr};
  // Node opens 0-2 close-on-exec: give the helper our stderr (dup2 onto itself clears the flag in the child),
  // so its own words on a refusal reach the daemon's terminal or log.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, 2, 2);
  pid_t pid;
  int err = posix_spawnp(&pid, "fusermount3", &actions, nullptr, const_cast<char* const*>(argv), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(sv[0]);
  if (err != 0) {
    close(sv[1]);
    return -err;
  }
  // Receive the fd (SCM_RIGHTS), then reap the helper.
  char byte;
  struct iovec iov = {&byte, 1};
  char ctrl[CMSG_SPACE(sizeof(int))];
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  ssize_t n;
  do {
    n = recvmsg(sv[1], &msg, 0);
  } while (n < 0 && errno == EINTR);
  int fd = -1;
  if (n > 0) {
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(c), sizeof fd);
  }
  close(sv[1]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (fd < 0) return WIFEXITED(status) && WEXITSTATUS(status) != 0 ? -EPERM : -EIO;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

int CloseFd(int fd) { return close(fd) < 0 ? -errno : 0; }

}  // namespace kvfs
