#include "mapped.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <malloc.h>
#include <sys/mman.h>

namespace kvfs {

long long ReleaseMapped(const std::string& path) {
  FILE* maps = fopen("/proc/self/maps", "re");
  if (!maps) return -errno;
  long long released = 0;
  int err = 0;
  char line[4096 + 256];
  while (fgets(line, sizeof line, maps)) {
    // start-end perms offset dev inode   pathname
    unsigned long start = 0, end = 0;
    char perms[8] = {};
    int name_at = 0;
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &start, &end, perms, &name_at) < 3 || name_at <= 0) continue;
    if (perms[3] != 's') continue;  // shared mappings only
    char* name = line + name_at;
    size_t n = strlen(name);
    while (n && (name[n - 1] == '\n' || name[n - 1] == ' ')) name[--n] = '\0';
    if (path != name) continue;
    if (madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED) < 0) {
      err = errno;
      continue;
    }
    released += static_cast<long long>(end - start);
  }
  fclose(maps);
  return released || !err ? released : -err;
}

MallocFigures MallocInfo() {
  struct mallinfo2 m = mallinfo2();
  return {static_cast<long long>(m.uordblks + m.hblkhd), static_cast<long long>(m.fordblks)};
}

}  // namespace kvfs
