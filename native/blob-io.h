// Blob files of the embedded store (src/backend/blob-files.ts): each put and retire of a file in one call on a
// worker thread, so a blob costs one trip off the event loop, not one per open, write and close.
//
// A retired file may be kept as a spare: renamed into the store's spare directory with its blocks and page cache,
// and renamed back over a later blob's path, whose bytes then overwrite pages and blocks that exist. A new file's
// first write allocates both (fresh page-cache pages and, at writeback, its extents and a journal entry), which
// costs several times the copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvfs {

// Makes the file at path hold exactly data[0, len). spare: a file to take the place of (renamed to path, then
// overwritten and cut to len), or empty: a new file (created 0600, or cut to 0 if it exists). A spare that is
// gone is not an error: a new file is made. On a failure after path was made, path is unlinked (a put that failed
// leaves nothing). Returns 0 or -errno.
int PutFile(const std::string& spare, const std::string& path, const uint8_t* data, size_t len);

// Removes the file at path: renamed to spare when spare is not empty, else unlinked. Returns its size before
// (>= 0), or -errno (-ENOENT when there is no file at path).
int64_t RetireFile(const std::string& path, const std::string& spare);

}  // namespace kvfs
