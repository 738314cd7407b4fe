#include "coordinator/serving/block_manager.h"

#include <algorithm>
#include <cassert>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace mlaserve {

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size)
    : block_size_(block_size), blocks_(num_blocks) {
  assert(block_size > 0);
  assert(num_blocks >= 0 && num_blocks <= std::numeric_limits<int32_t>::max());
  // Popped from the back, so low ids go out first: easier to read in traces.
  free_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

PrefixMatch BlockManager::Match(absl::Span<const int32_t> tokens, int64_t max_tokens) {
  return Match(tokens, max_tokens, PrefixMatch{});
}

PrefixMatch BlockManager::Match(absl::Span<const int32_t> tokens, int64_t max_tokens, const PrefixMatch& earlier) {
  PrefixMatch match;
  const int64_t limit = std::min<int64_t>(tokens.size(), max_tokens) / block_size_;
  ++clock_;
  int32_t node = kRoot;
  auto take = [&](int32_t id) {
    node = id;
    Touch(id);
    match.blocks.push_back(id);
    match.insertions.push_back(blocks_[id].insertion);
  };
  // A block still cached from the same insertion holds the same tokens under
  // the same parent: the earlier walk's word for it still stands.
  const int64_t trusted = std::min<int64_t>(
      {limit, static_cast<int64_t>(earlier.blocks.size()), static_cast<int64_t>(earlier.insertions.size())});
  for (int64_t i = 0; i < trusted; ++i) {
    const int32_t id = earlier.blocks[i];
    if (!blocks_[id].cached || blocks_[id].insertion != earlier.insertions[i]) break;
    take(id);
  }
  for (int64_t i = static_cast<int64_t>(match.blocks.size()); i < limit; ++i) {
    auto it = children_.find(ChildKey{node, BlockTokens(tokens, i)});
    if (it == children_.end()) break;
    take(it->second);
  }
  match.num_tokens = static_cast<int64_t>(match.blocks.size()) * block_size_;
  return match;
}

absl::Status BlockManager::Acquire(absl::Span<const int32_t> blocks) {
  RETURN_IF_ERROR(CheckIds(blocks));
  for (int32_t id : blocks) {
    if (!blocks_[id].cached && blocks_[id].ref_count == 0) {
      return absl::FailedPreconditionError(absl::StrCat("block ", id, " is free"));
    }
  }
  for (int32_t id : blocks) {
    Block& b = blocks_[id];
    if (b.ref_count++ == 0 && b.cached && b.held_children == 0) SetHeld(id);
  }
  return absl::OkStatus();
}

bool BlockManager::CanAllocate(int64_t n) const {
  return n >= 0 && n <= num_free_blocks() + num_evictable_;
}

absl::StatusOr<std::vector<int32_t>> BlockManager::Allocate(int64_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", n, " blocks"));
  if (!CanAllocate(n)) {
    return absl::ResourceExhaustedError(absl::StrCat("need ", n, " KV blocks, have ", num_free_blocks(),
                                                     " free and ", num_evictable_, " evictable"));
  }
  std::vector<int32_t> out;
  out.reserve(n);
  while (static_cast<int64_t>(out.size()) < n) {
    int32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {
      // Nonempty: every evictable subtree ends in evictable leaves.
      id = lru_.begin()->second;
      Evict(id);
    }
    blocks_[id].ref_count = 1;
    ++num_referenced_;
    out.push_back(id);
  }
  return out;
}

absl::Status BlockManager::Cache(absl::Span<const int32_t> tokens, absl::Span<const int32_t> blocks) {
  const int64_t full = static_cast<int64_t>(tokens.size()) / block_size_;
  if (static_cast<int64_t>(blocks.size()) < full) {
    return absl::InvalidArgumentError(absl::StrCat("block table of ", blocks.size(), " blocks cannot hold ",
                                                   tokens.size(), " tokens"));
  }
  RETURN_IF_ERROR(CheckIds(blocks.first(full)));
  // Earlier steps cached everything up to the deepest block already indexed
  // at its position; resume after it.
  int64_t start = full;
  while (start > 0 && !IsNodeAt(blocks[start - 1], start - 1, tokens)) --start;
  ++clock_;
  int32_t parent = start == 0 ? kRoot : blocks[start - 1];
  for (int64_t i = start; i < full; ++i) {
    const int32_t id = blocks[i];
    const absl::Span<const int32_t> key = BlockTokens(tokens, i);
    auto it = children_.find(ChildKey{parent, key});
    if (it != children_.end()) {
      if (it->second != id && blocks_[id].cached) return CachedElsewhere(id);
      parent = it->second;  // an earlier block caches this prefix; ours stays private
      continue;
    }
    if (blocks_[id].cached) return CachedElsewhere(id);
    if (blocks_[id].ref_count == 0) {
      return absl::FailedPreconditionError(absl::StrCat("block ", id, " is not referenced"));
    }
    Insert(parent, key, id, static_cast<int32_t>(i));
    parent = id;
  }
  return absl::OkStatus();
}

absl::Status BlockManager::Release(absl::Span<const int32_t> blocks) {
  RETURN_IF_ERROR(CheckIds(blocks));
  absl::flat_hash_map<int32_t, int32_t> drops;
  for (int32_t id : blocks) {
    if (++drops[id] > blocks_[id].ref_count) {
      return absl::FailedPreconditionError(
          absl::StrCat("block ", id, " released more often than referenced (", blocks_[id].ref_count, ")"));
    }
  }
  ++clock_;
  for (int32_t id : blocks) {
    Block& b = blocks_[id];
    --b.ref_count;
    if (b.cached) {
      Touch(id);
      if (!Held(b)) SetUnheld(id);  // its last reference, and no held child
    } else if (b.ref_count == 0) {
      free_.push_back(id);
      --num_referenced_;
    }
  }
  return absl::OkStatus();
}

absl::Status BlockManager::CachedElsewhere(int32_t id) {
  return absl::FailedPreconditionError(absl::StrCat("block ", id, " is cached for another prefix"));
}

absl::Status BlockManager::CheckIds(absl::Span<const int32_t> blocks) const {
  for (int32_t id : blocks) {
    if (id < 0 || id >= num_blocks()) {
      return absl::InvalidArgumentError(absl::StrCat("block id ", id, " outside [0, ", num_blocks(), ")"));
    }
  }
  return absl::OkStatus();
}

absl::Span<const int32_t> BlockManager::BlockTokens(absl::Span<const int32_t> tokens, int64_t index) const {
  return tokens.subspan(index * block_size_, block_size_);
}

bool BlockManager::IsNodeAt(int32_t id, int64_t index, absl::Span<const int32_t> tokens) const {
  const Block& b = blocks_[id];
  return b.cached && b.depth == index && absl::MakeConstSpan(b.tokens) == BlockTokens(tokens, index);
}

void BlockManager::SetHeld(int32_t id) {
  --num_evictable_;
  ++num_referenced_;
  UpdateLru(id);
  AddHeldChild(blocks_[id].parent);
}

void BlockManager::SetUnheld(int32_t id) {
  ++num_evictable_;
  --num_referenced_;
  UpdateLru(id);
  RemoveHeldChild(blocks_[id].parent);
}

void BlockManager::AddHeldChild(int32_t parent) {
  if (parent == kRoot) return;
  Block& p = blocks_[parent];
  if (p.held_children++ == 0 && p.ref_count == 0) SetHeld(parent);
}

void BlockManager::RemoveHeldChild(int32_t parent) {
  if (parent == kRoot) return;
  Block& p = blocks_[parent];
  if (--p.held_children == 0 && p.ref_count == 0) SetUnheld(parent);
}

void BlockManager::Insert(int32_t parent, absl::Span<const int32_t> tokens, int32_t id, int32_t depth) {
  Block& b = blocks_[id];
  b.cached = true;
  b.parent = parent;
  b.depth = depth;
  b.num_children = 0;
  b.held_children = 0;
  b.last_use = clock_;
  b.insertion = ++insertions_;
  b.tokens.assign(tokens.begin(), tokens.end());
  children_.emplace(ChildKey{parent, b.tokens}, id);
  // The block stays referenced, so only its ancestors' counts change.
  if (parent != kRoot) {
    ++blocks_[parent].num_children;
    UpdateLru(parent);
  }
  AddHeldChild(parent);
}

void BlockManager::Evict(int32_t id) {
  Block& b = blocks_[id];
  lru_.erase({b.last_use, id});
  b.in_lru = false;
  children_.erase(ChildKey{b.parent, b.tokens});
  b.cached = false;
  b.tokens.clear();
  --num_evictable_;
  if (b.parent != kRoot) {
    --blocks_[b.parent].num_children;
    UpdateLru(b.parent);
  }
}

void BlockManager::Touch(int32_t id) {
  Block& b = blocks_[id];
  if (b.in_lru) {
    lru_.erase({b.last_use, id});
    lru_.emplace(clock_, id);
  }
  b.last_use = clock_;
}

void BlockManager::UpdateLru(int32_t id) {
  Block& b = blocks_[id];
  const bool candidate = b.cached && !Held(b) && b.num_children == 0;
  if (candidate == b.in_lru) return;
  if (candidate) {
    lru_.emplace(b.last_use, id);
  } else {
    lru_.erase({b.last_use, id});
  }
  b.in_lru = candidate;
}

}  // namespace mlaserve
