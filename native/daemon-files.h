// Files a daemon holds for its whole life, and who is at the other end of its control socket.
//
// An exclusive, advisory lock on a file (flock(2)), held as long as the returned descriptor is open and released
// by the kernel when the process dies (kill -9 included), so a lock left by a dead daemon never blocks the next.
#pragma once

#include <string>

namespace kvfs {

// Sends this process's standard output and error (descriptors 1 and 2) to the end of path, created 0600 when
// missing: what Node and native code (LMDB's own messages included) print lands there. Returns 0 or -errno.
int RedirectOutput(const std::string& path);

// Opens (creating it 0600 when missing, never following a symlink) and locks path exclusively without waiting.
// Returns the descriptor (close-on-exec), -EWOULDBLOCK when another open file description holds the lock, or
// another -errno.
int LockFile(const std::string& path);

// The uid of the process at the other end of a connected Unix socket (SO_PEERCRED, as the kernel recorded it
// at connect), or -errno.
long PeerUid(int fd);

}  // namespace kvfs
