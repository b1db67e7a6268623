// The kernel side of FUSE: /dev/fuse and mounting. Functions return 0 or a non-negative result, or -errno.
// They know nothing of the FUSE protocol beyond what opening, cloning and mounting need.
#pragma once

#include <string>
#include <vector>

namespace kvfs {

// Opens /dev/fuse read-write with O_CLOEXEC and closes it again: 0 when a FUSE mount could be served, -errno
// (ENOENT: no device node, ENODEV: no fuse module, EACCES/EPERM: not allowed) otherwise.
int ProbeFuseDevice();

// Opens /dev/fuse for a new session: the fd, or -errno.
int OpenFuseDevice();

// A second fd on the same session (FUSE_DEV_IOC_CLONE), for another reader thread: the fd, or -errno.
int CloneFuseDevice(int session_fd);

// mount(2) of a FUSE filesystem served on fd (root only). options are the filesystem's own (without fd=,
// rootmode=, user_id=, group_id=, which are added here). Returns 0 or -errno.
int MountFuse(int fd, const std::string& mountpoint, const std::string& fstype, const std::string& source,
              const std::string& options, unsigned long flags);

// Mounting without root: runs fusermount3 with the options and receives the session fd from it over a
// socket pair (_FUSE_COMMFD). Returns the fd, or -errno.
int FusermountMount(const std::string& mountpoint, const std::string& options);

int CloseFd(int fd);

}  // namespace kvfs
