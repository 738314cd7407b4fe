"""cuda_library: compiles .cu sources with nvcc for sm_90a (Hopper) and wraps the
objects in a cc_library. Bazel 4.2.3 has no CUDA rules, so a genrule calls nvcc."""

def cuda_library(name, srcs, hdrs = [], deps = [], **kwargs):
    objs = []
    for src in srcs:
        obj = name + "_" + src.replace("/", "_").replace(".cu", ".o")
        native.genrule(
            name = obj + "_nvcc",
            srcs = [src] + hdrs,
            outs = [obj],
            # nvcc names its temporary files after its pid, and sandboxed
            # actions (each in its own pid namespace) share /tmp: a private
            # TMPDIR keeps two compiling at once apart.
            cmd = ("tmp=$$(mktemp -d) && TMPDIR=$$tmp /usr/local/cuda/bin/nvcc -c -std=c++20 -O3 " +
                   "-gencode=arch=compute_90a,code=sm_90a " +
                   "-Xcompiler -fPIC -I. $(location " + src + ") -o $@; status=$$?; rm -rf $$tmp; exit $$status"),
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@cuda//:cudart"],
        **kwargs
    )
