#include "xattrs.h"

#include <cerrno>
#include <sys/xattr.h>

namespace kvfs {

namespace {

// Calls get(buf, size) with a buffer grown until the value fits (a value may grow between the size query and
// the read: ERANGE then asks again).
template <typename Get>
std::string ReadGrowing(Get get, int* err) {
  *err = 0;
  for (int attempt = 0; attempt < 8; attempt++) {
    ssize_t n = get(nullptr, 0);
    if (n < 0) {
      *err = -errno;
      return {};
    }
    std::string buf(static_cast<size_t>(n), '\0');
    if (n == 0) return buf;
    ssize_t got = get(&buf[0], buf.size());
    if (got >= 0) {
      buf.resize(static_cast<size_t>(got));
      return buf;
    }
    if (errno != ERANGE) {
      *err = -errno;
      return {};
    }
  }
  *err = -ERANGE;
  return {};
}

}  // namespace

std::vector<std::string> ListXattrs(const std::string& path, int* err) {
  std::string all = ReadGrowing([&](char* b, size_t s) { return llistxattr(path.c_str(), b, s); }, err);
  std::vector<std::string> names;
  if (*err) return names;
  size_t start = 0;
  for (size_t i = 0; i < all.size(); i++) {
    if (all[i] != '\0') continue;
    if (i > start) names.emplace_back(all, start, i - start);
    start = i + 1;
  }
  return names;
}

std::string GetXattr(const std::string& path, const std::string& name, int* err) {
  return ReadGrowing([&](char* b, size_t s) { return lgetxattr(path.c_str(), name.c_str(), b, s); }, err);
}

}  // namespace kvfs
