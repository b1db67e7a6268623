// Pages of a file that this process maps (LMDB maps its data file whole) counted in its resident set.
#pragma once

#include <string>

namespace kvfs {

// Drops this process's page-table entries for every shared mapping of the file at path (as /proc/self/maps names
// it: a resolved path) with madvise(MADV_DONTNEED): the pages stay in the page cache, dirty ones included (the
// mapping is shared, so nothing is lost), and the next access maps them again. What a walk of the whole file
// touched then no longer counts in the process's RSS. Private mappings are left alone (DONTNEED would discard
// their changes). Returns the bytes of the ranges advised, or -errno.
long long ReleaseMapped(const std::string& path);

// glibc's malloc, as mallinfo2(3) counts it: bytes handed out (arenas and mmapped blocks) and bytes it keeps free
// in its arenas (freed by the program, kept for reuse: resident until reused or trimmed).
struct MallocFigures {
  long long in_use;
  long long free;
};
MallocFigures MallocInfo();

}  // namespace kvfs
