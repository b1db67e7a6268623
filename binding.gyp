{
  "targets": [
    {
      "target_name": "kvfs_native",
      "sources": ["native/addon.cc", "native/fuse-dev.cc", "native/daemon-files.cc", "native/channel.cc", "native/read-index.cc", "native/mapped.cc", "native/xattrs.cc", "native/blob-io.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-O2", "-Wall", "-Wextra", "-std=c++17", "-pthread"], "ldflags": ["-pthread"]
    }
  ]
}
