// Weight loading against the disk it reads from. Writes (once) a checkpoint of
// a config's shapes -- FP8 as DeepSeek stores V3 (every projection e4m3 in
// 128x128 blocks with its scales, the rest bf16), filled with random bytes,
// sharded into files of about --file_gb with an index -- then, with the
// files evicted from the page cache before each:
//   1. reads every file straight through, --readers files at a time (the
//      disk's own rate);
//   2. loads one rank's shard onto --device (LoadModelWeights: only the
//      shard's bytes, pinned staging, the next layer prefetched).
// Prints both in GB/s; the load's rate counts the checkpoint bytes the shard
// read.
//
//   load_bench --config tests/testdata/configs/deepseek-v3-fp8.json --layers 8 \
//       --dir /tmp/v3_fp8 --device cuda --dp_attention 8 --ep 8 --rank 0
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/shard_layout.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/load_report.h"
#include "worker/model_weights.h"
#include "worker/ops_factory.h"
#include "worker/random_checkpoint.h"

ABSL_FLAG(std::string, config, "", "a DeepSeek config.json (the checkpoint's shapes)");
ABSL_FLAG(int, layers, 0, "override num_hidden_layers (0: the config's)");
ABSL_FLAG(std::string, dir, "", "where the checkpoint is (written when absent)");
ABSL_FLAG(double, file_gb, 4, "bytes per checkpoint file");
ABSL_FLAG(int, readers, 4, "files read at once when measuring the disk");
ABSL_FLAG(std::string, device, "cuda", "cpu or cuda");
ABSL_FLAG(std::string, weights_dtype, "auto", "auto, bf16 or fp8 (as the workers')");
ABSL_FLAG(int, tp, 1, "plan: head shards per attention replica");
ABSL_FLAG(int, dp_attention, 1, "plan: attention replicas");
ABSL_FLAG(int, ep, 1, "plan: expert shards");
ABSL_FLAG(int, rank, 0, "the rank whose shard is loaded");

namespace mlaserve {
namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Random bytes fast (the values do not matter, only that FP8 ones are finite).
void FillRandom(std::string& bytes, uint64_t seed, uint8_t mask) {
  uint64_t x = seed | 1;
  for (char& c : bytes) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    c = static_cast<char>((x >> 24) & mask);
  }
}

TensorToWrite RandomTensor(const std::string& name, DType dtype, std::vector<int64_t> shape, uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  TensorToWrite t{name, dtype, std::move(shape), std::string(n * DTypeBytes(dtype), '\0')};
  if (dtype == DType::kF8E4M3) {
    FillRandom(t.bytes, seed, 0xb7);  // |exponent| <= 6: finite, never NaN
  } else if (dtype == DType::kF32) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = 1e-3f;
      std::memcpy(t.bytes.data() + 4 * i, &v, 4);
    }
  } else {
    FillRandom(t.bytes, seed, 0x3b);  // bf16 bytes: small magnitudes
  }
  return t;
}

// The checkpoint of `config` in `dir`, written file by file.
absl::Status WriteCheckpoint(const ModelConfig& config, const std::string& dir, double file_gb, bool fp8) {
  std::filesystem::create_directories(dir);
  nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  std::vector<TensorToWrite> pending;
  size_t pending_bytes = 0, written = 0;
  int file = 0;
  auto flush = [&]() -> absl::Status {
    if (pending.empty()) return absl::OkStatus();
    const std::string name = absl::StrCat("model-", file++, ".safetensors");
    for (const TensorToWrite& t : pending) index["weight_map"][t.name] = name;
    RETURN_IF_ERROR(WriteSafetensors(dir + "/" + name, pending));
    written += pending_bytes;
    std::fprintf(stderr, "load_bench: wrote %s, %.1f GB so far\n", name.c_str(), written / 1e9);
    pending.clear();
    pending_bytes = 0;
    return absl::OkStatus();
  };
  uint64_t seed = 1;
  for (const TensorShape& t : CheckpointTensorShapes(config)) {
    const size_t before = pending.size();
    if (fp8 && IsFp8Projection(t.name, t.shape)) {
      pending.push_back(RandomTensor(t.name, DType::kF8E4M3, t.shape, ++seed));
      pending.push_back(RandomTensor(t.name + "_scale_inv", DType::kF32,
                                     {(t.shape[0] + 127) / 128, (t.shape[1] + 127) / 128}, ++seed));
    } else {
      pending.push_back(RandomTensor(t.name, DType::kBF16, t.shape, ++seed));
    }
    for (size_t i = before; i < pending.size(); ++i) pending_bytes += pending[i].bytes.size();
    if (pending_bytes >= file_gb * 1e9) RETURN_IF_ERROR(flush());
  }
  RETURN_IF_ERROR(flush());
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(1);
  return absl::OkStatus();
}

std::vector<std::string> CheckpointFiles(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Drops the files' pages from the page cache (clean pages: no root needed).
void Evict(const std::vector<std::string>& files) {
  for (const std::string& path : files) {
    const int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

// Reads every file through, `readers` at a time; bytes per second.
double DiskRate(const std::vector<std::string>& files, int readers) {
  std::atomic<size_t> next{0}, total{0};
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int r = 0; r < readers; ++r) {
    threads.emplace_back([&] {
      std::vector<char> buffer(64 << 20);
      for (size_t i = next++; i < files.size(); i = next++) {
        const int fd = open(files[i].c_str(), O_RDONLY);
        if (fd < 0) continue;
        for (ssize_t n; (n = read(fd, buffer.data(), buffer.size())) > 0;) total += n;
        close(fd);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return total / Seconds(start);
}

absl::Status Run() {
  const std::string dir = absl::GetFlag(FLAGS_dir);
  if (dir.empty() || absl::GetFlag(FLAGS_config).empty()) return absl::InvalidArgumentError("--config and --dir are required");
  std::ifstream in(absl::GetFlag(FLAGS_config));
  nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
  if (json.is_discarded()) return absl::InvalidArgumentError("--config is not JSON");
  if (absl::GetFlag(FLAGS_layers) > 0) json["num_hidden_layers"] = absl::GetFlag(FLAGS_layers);
  if (!std::filesystem::exists(dir + "/model.safetensors.index.json")) {
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << json.dump(1);
    ASSIGN_OR_RETURN(const ModelConfig written, LoadModelConfig(dir + "/config.json"));
    RETURN_IF_ERROR(WriteCheckpoint(written, dir, absl::GetFlag(FLAGS_file_gb), written.fp8_block_rows > 0));
  }
  ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(dir + "/config.json"));
  const std::vector<std::string> files = CheckpointFiles(dir);
  size_t checkpoint_bytes = 0;
  for (const std::string& f : files) checkpoint_bytes += std::filesystem::file_size(f);

  Evict(files);
  const double disk = DiskRate(files, absl::GetFlag(FLAGS_readers));
  std::printf("disk: %.1f GB in %zu files read at %.2f GB/s (%d readers, page cache evicted)\n",
              checkpoint_bytes / 1e9, files.size(), disk / 1e9, absl::GetFlag(FLAGS_readers));

  const ParallelPlan plan{absl::GetFlag(FLAGS_tp), absl::GetFlag(FLAGS_dp_attention), absl::GetFlag(FLAGS_ep)};
  ASSIGN_OR_RETURN(const ShardLayout shard, MakeShardLayout(config, plan, absl::GetFlag(FLAGS_rank)));
  ASSIGN_OR_RETURN(const WeightsDtype dtype, ParseWeightsDtype(absl::GetFlag(FLAGS_weights_dtype)));
  ASSIGN_OR_RETURN(std::unique_ptr<Ops> ops, NewOps(absl::GetFlag(FLAGS_device)));
  Evict(files);
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  if (config.fp8_block_rows > 0) checkpoint->set_fp8_block(config.fp8_block_rows, config.fp8_block_cols);
  int64_t bytes_read = 0;
  const LoadProgress report = LoadReporter("load_bench");
  ASSIGN_OR_RETURN(ModelWeights weights,
                   LoadModelWeights(*checkpoint, config, shard, *ops, dtype,
                                    [&](int64_t done, int64_t total, int64_t bytes) {
                                      bytes_read = bytes;
                                      report(done, total, bytes);
                                    }));
  RETURN_IF_ERROR(ops->Synchronize());
  const double seconds = Seconds(start);
  std::printf("load: rank %d of %s, %.1f GB of the checkpoint's %.1f GB in %.2f s: %.2f GB/s (%.0f%% of the disk's rate)\n",
              absl::GetFlag(FLAGS_rank), plan.ToString().c_str(), bytes_read / 1e9, checkpoint_bytes / 1e9, seconds,
              bytes_read / 1e9 / seconds, 100.0 * bytes_read / seconds / disk);
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = mlaserve::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "load_bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
