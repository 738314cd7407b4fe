#!/usr/bin/env bash
# Coverage-guided fuzzing of the targets in tests/fuzz with clang's libFuzzer
# and AddressSanitizer + UndefinedBehaviorSanitizer over every repository
# source they use (Bazel lists them; the Debian libraries stay uninstrumented).
# Crashes land in $OUT_DIR (default /tmp/fuzz_out) and fail the run; the corpus
# grows in a copy, never in the repository.
#   tests/fuzz/run_libfuzzer.sh [SECONDS_PER_TARGET=30] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(openai_request_fuzz tokenizer_fuzz safetensors_fuzz model_config_fuzz step_fuzz)
# clang 16 (deploy/install_deps.sh installs it): Debian's default clang (14)
# cannot compile libstdc++ 12's ranges.
deploy/install_deps.sh
clang=clang++-16
# One thread: libFuzzer runs inputs one at a time, and idle OpenMP threads spin.
export OMP_NUM_THREADS=1
out=${OUT_DIR:-/tmp/fuzz_out}
rm -rf "$out/build"
mkdir -p "$out"
# Every Debian library Bazel's @system targets link (those a target does not
# need are dropped by --as-needed), but the ones that bring their own main().
system_libs=$(grep -o '"-l[^"]*"' bazel/system.BUILD | tr -d '"' | sort -u | grep -v -e _main -e benchmark | tr '\n' ' ')
status=0
for target in "${targets[@]}"; do
  # The repository's sources it uses, and generated ones (protobuf) from bazel-bin.
  bazel build "//tests/fuzz:$target" 2>/dev/null
  srcs=$(bazel cquery "kind('source file', deps(//tests/fuzz:$target))" --output=label 2>/dev/null |
         sed -n 's|^//\([^:]*\):\([^ ]*\.cc\).*|\1/\2|p' | sed 's|^/||')
  srcs+=" "$(bazel cquery "kind('generated file', deps(//tests/fuzz:$target))" --output=label 2>/dev/null |
             sed -n 's|^//\([^:]*\):\([^ ]*\.pb\.cc\).*|bazel-bin/\1/\2|p')
  build="$out/build"
  mkdir -p "$build"
  objs=()
  for src in $srcs; do
    # Each source once per run, whichever targets share it.
    obj="$build/$(echo "$src" | tr / _).o"
    objs+=("$obj")
    [[ -e "$obj" ]] && continue
    "$clang" -std=c++20 -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fopenmp \
      -I. -Ibazel-bin -c "$src" -o "$obj"
  done
  # shellcheck disable=SC2086  # one flag per library
  "$clang" -fsanitize=fuzzer,address,undefined -fopenmp "${objs[@]}" -o "$build/$target" -Wl,--as-needed $system_libs
  corpus="$out/corpus/$target"
  mkdir -p "$corpus"
  cp -n "tests/fuzz/corpus/${target%_fuzz}/"* "$corpus/"
  echo "== $target: ${seconds}s"
  if ! "$build/$target" "$corpus" -max_total_time="$seconds" -artifact_prefix="$out/$target-" -print_final_stats=1 \
      2>"$out/$target.log"; then
    echo "$target: FAILED (see $out/$target.log and $out/$target-*)"
    status=1
  fi
  grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)|^#[0-9]+ *DONE" "$out/$target.log" || true
done
exit $status
