{
  "targets": [
    {
      "target_name": "elasticmem",
      "sources": [
        "native/addon.cc",
        "native/error.cc",
        "native/napi_util.cc",
        "native/inject.cc",
        "native/inject_code.cc",
        "native/inject_threads.cc",
        "native/attach.cc",
        "native/memstore.cc",
        "native/uffd.cc",
        "native/pager.cc",
        "native/pager_fault.cc",
        "native/pager_evict.cc",
        "native/pager_napi.cc",
        "native/peercred.cc",
        "native/procfs.cc",
        "native/wake_signal.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "libraries": ["-llz4", "-lpthread"]
    }
  ]
}
