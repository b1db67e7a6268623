// The kernel side of FUSE: /dev/fuse. Functions return 0 or a non-negative result, or -errno.
// They know nothing of the FUSE protocol beyond what opening and probing the device needs.
#pragma once

namespace kvfs {

// Opens /dev/fuse read-write with O_CLOEXEC and closes it again: 0 when a FUSE mount could be served, -errno
// (ENOENT: no device node, ENODEV: no fuse module, EACCES/EPERM: not allowed) otherwise.
int ProbeFuseDevice();

}  // namespace kvfs
