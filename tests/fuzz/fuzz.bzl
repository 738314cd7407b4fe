"""fuzz_target: a libFuzzer entry point as a library, and a test that runs it
over corpus/<name without _fuzz>/ and random mutations with fuzz_main.cc."""

def fuzz_target(name, deps, data = [], runs = 3000):
    corpus = name[:-len("_fuzz")]
    native.cc_library(
        name = name,
        testonly = True,
        srcs = [name + ".cc"],
        deps = deps,
        alwayslink = True,
    )
    native.cc_test(
        name = name + "_test",
        srcs = ["fuzz_main.cc"],
        args = ["tests/fuzz/corpus/" + corpus, "--runs=%d" % runs],
        data = data + native.glob(["corpus/" + corpus + "/**"]),
        deps = [":" + name],
    )
