// The driver of the fuzz targets when they are not built with libFuzzer
// (Bazel, gcc, AddressSanitizer: the CI run): every file of the corpus
// directories named on the command line goes through LLVMFuzzerTestOneInput,
// then --runs inputs made from them by random byte mutations (flips,
// insertions, deletions, duplicated and spliced ranges, truncations) from a
// fixed seed, so a run is repeatable. libFuzzer's coverage-guided search is
// tests/fuzz/run_libfuzzer.sh; this driver is written by hand because the
// CI compiler (gcc) has no libFuzzer.
//
//   <target> CORPUS_DIR... [--runs=N] [--seed=S]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::string Mutate(std::string input, const std::vector<std::string>& corpus, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 8);
  for (int e = 0; e < edits; ++e) {
    const size_t at = input.empty() ? 0 : rng() % input.size();
    switch (rng() % 7) {
      case 0:  // flip a bit
        if (!input.empty()) input[at] = static_cast<char>(input[at] ^ (1 << (rng() % 8)));
        break;
      case 1:  // insert a byte, often a structural one
        input.insert(at, 1, "{}[]\":,\\0\xff"[rng() % 11]);
        break;
      case 2:  // delete a range
        if (!input.empty()) input.erase(at, 1 + rng() % std::min<size_t>(16, input.size() - at));
        break;
      case 3:  // duplicate a range
        if (!input.empty()) input.insert(at, input.substr(at, 1 + rng() % 64));
        break;
      case 4: {  // splice in a range of another input
        const std::string& other = corpus[rng() % corpus.size()];
        if (!other.empty()) {
          const size_t from = rng() % other.size();
          input.insert(at, other.substr(from, 1 + rng() % 128));
        }
        break;
      }
      case 5:  // truncate
        input.resize(at);
        break;
      default:  // an interesting number as text
        input.insert(at, std::to_string(static_cast<int64_t>(rng()) >> (rng() % 64)));
        break;
    }
  }
  return input;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t runs = 2000;
  uint64_t seed = 1;
  std::vector<std::string> corpus;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--runs=", 7) == 0) {
      runs = std::atoll(argv[i] + 7);
    } else if (std::strncmp(argv[i], "--seed=", 7) == 0) {
      seed = std::strtoull(argv[i] + 7, nullptr, 10);
    } else {
      for (const auto& entry : std::filesystem::directory_iterator(argv[i])) {
        std::ifstream in(entry.path(), std::ios::binary);
        std::stringstream bytes;
        bytes << in.rdbuf();
        corpus.push_back(bytes.str());
      }
    }
  }
  if (corpus.empty()) {
    std::cerr << "no corpus files\n";
    return 2;
  }
  for (const std::string& input : corpus) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  std::mt19937_64 rng(seed);
  for (int64_t r = 0; r < runs; ++r) {
    const std::string input = Mutate(corpus[rng() % corpus.size()], corpus, rng);
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  }
  std::cout << corpus.size() << " corpus inputs and " << runs << " mutations (seed " << seed << ") ran\n";
  return 0;
}
