#include "kernels/ops.h"

namespace mlaserve {

int64_t AttentionLayout::num_tokens() const {
  int64_t n = 0;
  for (const SequenceSlice& s : seqs) n += s.num_tokens;
  return n;
}

std::vector<int64_t> AttentionLayout::TokenSlots() const {
  std::vector<int64_t> slots(num_tokens());
  for (const SequenceSlice& s : seqs) {
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      const int64_t pos = s.context_len - s.num_tokens + i;
      const int32_t block = s.block_table[pos / block_size];
      slots[s.token_begin + i] = block == kBlockElsewhere ? kSlotElsewhere : int64_t{block} * block_size + pos % block_size;
    }
  }
  return slots;
}

std::vector<int32_t> AttentionLayout::TokenPositions() const {
  std::vector<int32_t> positions(num_tokens());
  for (const SequenceSlice& s : seqs) {
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      positions[s.token_begin + i] = static_cast<int32_t>(s.context_len - s.num_tokens + i);
    }
  }
  return positions;
}

}  // namespace mlaserve
