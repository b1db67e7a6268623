// Extended attributes of a local file, read without following a symlink (llistxattr, lgetxattr): for
// `kvfs load`, which copies a tree's xattrs into a volume. Node's fs has no xattr calls.
#pragma once

#include <string>
#include <vector>

namespace kvfs {

// The names of path's extended attributes, or -errno in *err (names then empty).
std::vector<std::string> ListXattrs(const std::string& path, int* err);

// The value of attribute name of path, or -errno in *err.
std::string GetXattr(const std::string& path, const std::string& name, int* err);

}  // namespace kvfs
