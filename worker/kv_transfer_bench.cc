// KV migration bandwidth between two GPUs: whole latent KV blocks moved by
// the workers' transfer code (worker/block_io.h over a two-rank NCCL link,
// one message per block, scattered block ids) against NCCL send/recv of one
// contiguous buffer of the same bytes, measured in the same run; and the
// bytes MLA moves per token against MHA at the same dimensions.
//
//   kv_transfer_bench [--layers 61] [--max_blocks 4096] [--csv out.csv]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_check.h"
#include "worker/block_io.h"
#include "worker/comm/nccl_communicator.h"
#include "worker/comm/rendezvous_store.h"

ABSL_FLAG(int, layers, 61, "layers (DeepSeek-V3: 61)");
ABSL_FLAG(int, latent_dim, 576, "kv_lora_rank + qk_rope_head_dim (DeepSeek-V3: 512 + 64)");
ABSL_FLAG(int, block_size, 64, "tokens per block");
ABSL_FLAG(int, max_blocks, 4096, "largest transfer, in blocks");
ABSL_FLAG(std::string, csv, "", "also write the table here");

namespace mlaserve {
namespace {

struct Rank {
  std::unique_ptr<Communicator> link;
  Tensor pool;
  void* contiguous = nullptr;
};

absl::Status Setup(RendezvousStore& store, int rank, int64_t num_blocks, int64_t values_per_block, Rank* out) {
  CUDA_RETURN_IF_ERROR(cudaSetDevice(rank));
  ASSIGN_OR_RETURN(out->link, NewNcclCommunicator(store, "bench", rank, 2, NcclOptions{.device = rank}));
  out->pool.dtype = DType::kBF16;
  out->pool.device = Device::kCuda;
  out->pool.shape = {num_blocks, values_per_block};
  const size_t bytes = out->pool.num_bytes();
  CUDA_RETURN_IF_ERROR(cudaMalloc(&out->pool.data, bytes));
  CUDA_RETURN_IF_ERROR(cudaMemset(out->pool.data, rank == 0 ? 0x5a : 0, bytes));
  CUDA_RETURN_IF_ERROR(cudaMalloc(&out->contiguous, bytes));
  return absl::OkStatus();
}

double Seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Runs `op(rank)` on both ranks at once; the slower rank's time.
absl::StatusOr<double> Both(const std::function<absl::Status(int)>& op) {
  absl::Status status[2];
  const auto start = std::chrono::steady_clock::now();
  std::thread peer([&] { status[1] = op(1); });
  status[0] = op(0);
  peer.join();
  const double seconds = Seconds(std::chrono::steady_clock::now() - start);
  RETURN_IF_ERROR(status[0]);
  RETURN_IF_ERROR(status[1]);
  return seconds;
}

absl::Status Run() {
  const int64_t layers = absl::GetFlag(FLAGS_layers), latent = absl::GetFlag(FLAGS_latent_dim);
  const int64_t block_size = absl::GetFlag(FLAGS_block_size), max_blocks = absl::GetFlag(FLAGS_max_blocks);
  const int64_t values_per_block = layers * block_size * latent;
  const double block_bytes = values_per_block * 2.0;
  int gpus = 0;
  CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&gpus));
  if (gpus < 2) return absl::FailedPreconditionError("needs two GPUs");
  InMemoryRendezvousStore store;
  Rank ranks[2];
  RETURN_IF_ERROR(Both([&](int r) { return Setup(store, r, max_blocks, values_per_block, &ranks[r]); }).status());
  // MLA caches the latent per token and layer; MHA at V3's dimensions would
  // cache K (128 heads x 192) and V (128 heads x 128).
  const double mla_token = latent * 2.0 * layers, mha_token = 128.0 * (192 + 128) * 2 * layers;
  std::printf("# block: %lld tokens x %lld layers x %lld latent bf16 = %.2f MB; per token MLA %.1f KB vs MHA %.1f KB (%.0fx)\n",
              static_cast<long long>(block_size), static_cast<long long>(layers), static_cast<long long>(latent),
              block_bytes / 1e6, mla_token / 1e3, mha_token / 1e3, mha_token / mla_token);
  std::printf("%7s %10s %12s %12s %12s %9s\n", "blocks", "MB", "blocks_ms", "blocks_GB/s", "nccl_GB/s", "of nccl");
  std::string table = "blocks,bytes,blocks_seconds,blocks_gbps,nccl_seconds,nccl_gbps\n";
  std::mt19937 rng(1);
  for (int64_t n = 1; n <= max_blocks; n *= 4) {
    std::vector<int32_t> ids(max_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    ids.resize(n);
    auto blocks = [&](int r) {
      CUDA_RETURN_IF_ERROR(cudaSetDevice(r));
      return r == 0 ? SendBlocks(*ranks[0].link, ranks[0].pool, ids, 1) : RecvBlocks(*ranks[1].link, ranks[1].pool, ids, 0);
    };
    auto contiguous = [&](int r) {
      CUDA_RETURN_IF_ERROR(cudaSetDevice(r));
      const int64_t count = n * values_per_block;
      return r == 0 ? ranks[0].link->Send(ranks[0].contiguous, count, DType::kBF16, 1)
                    : ranks[1].link->Recv(ranks[1].contiguous, count, DType::kBF16, 0);
    };
    RETURN_IF_ERROR(Both(blocks).status());  // warm-up
    RETURN_IF_ERROR(Both(contiguous).status());
    const int reps = n >= 256 ? 2 : 5;
    double blocks_s = 1e30, nccl_s = 1e30;
    for (int i = 0; i < reps; ++i) {
      ASSIGN_OR_RETURN(const double b, Both(blocks));
      ASSIGN_OR_RETURN(const double c, Both(contiguous));
      blocks_s = std::min(blocks_s, b);
      nccl_s = std::min(nccl_s, c);
    }
    const double bytes = n * block_bytes;
    std::printf("%7lld %10.1f %12.3f %12.1f %12.1f %8.0f%%\n", static_cast<long long>(n), bytes / 1e6, blocks_s * 1e3,
                bytes / blocks_s / 1e9, bytes / nccl_s / 1e9, 100 * nccl_s / blocks_s);
    std::fflush(stdout);
    absl::StrAppend(&table, n, ",", bytes, ",", blocks_s, ",", bytes / blocks_s / 1e9, ",", nccl_s, ",",
                    bytes / nccl_s / 1e9, "\n");
  }
  // The moved blocks hold the source's bytes.
  std::vector<uint8_t> check(static_cast<size_t>(block_bytes));
  CUDA_RETURN_IF_ERROR(cudaSetDevice(1));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(check.data(), ranks[1].pool.data, check.size(), cudaMemcpyDeviceToHost));
  if (std::any_of(check.begin(), check.end(), [](uint8_t b) { return b != 0x5a; })) {
    return absl::DataLossError("block 0 on the receiver does not hold the sender's bytes");
  }
  std::printf("# received blocks verified\n");
  if (!absl::GetFlag(FLAGS_csv).empty()) std::ofstream(absl::GetFlag(FLAGS_csv)) << table;
  return absl::OkStatus();
}

}  // namespace
}  // namespace mlaserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  absl::Status status = mlaserve::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "kv_transfer_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
