// The coordinator's view of one worker group's paged latent KV cache: which
// block holds what, and a radix index over full blocks so requests sharing a
// prompt prefix reuse its KV instead of recomputing it (SGLang's
// RadixAttention, vLLM's prefix caching).
//
// A block's KV depends on every token before it, so the index is a tree: a
// node is one full block, keyed under its parent (the node of the previous
// block) by its own block_size token ids; the path from the root spells the
// whole prefix the block was computed for.
//
// Every block is in exactly one of three states:
//   free       - on the free list: never used, or released while uncached.
//   evictable  - in the index, with no references anywhere in its subtree.
//   referenced - held by a sequence (cached or not), or a cached block whose
//                subtree holds a referenced block: a node cannot leave the
//                index before its descendants, so those ancestors stay too.
// free + evictable + referenced == num_blocks always holds. Allocate takes
// free blocks first, then evicts evictable leaves in least-recently-used order
// (a parent becomes a leaf once its children are gone).
//
// Typical use for a sequence with prompt p:
//   PrefixMatch m = bm.Match(p, p.size() - 1);
//   bm.Acquire(m.blocks);
//   table = m.blocks + *bm.Allocate(blocks_needed - m.blocks.size());
//   after each step: bm.Cache(tokens_so_far, table);
//   when done:       bm.Release(table);
//
// Thread-safety: none. One owner thread (the group's scheduler) calls it.
#ifndef MLASERVE_COORDINATOR_SERVING_BLOCK_MANAGER_H_
#define MLASERVE_COORDINATOR_SERVING_BLOCK_MANAGER_H_

#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mlaserve {

struct PrefixMatch {
  std::vector<int32_t> blocks;  // the cached path, root first
  int64_t num_tokens = 0;       // blocks.size() * block_size
  // Which insertion into the index of each block matched: a later Match of
  // the same tokens trusts the blocks still there from the same insertion.
  std::vector<uint64_t> insertions;
};

class BlockManager {
 public:
  // REQUIRES: block_size > 0 and 0 <= num_blocks <= INT32_MAX.
  BlockManager(int64_t num_blocks, int64_t block_size);

  BlockManager(const BlockManager&) = delete;
  BlockManager& operator=(const BlockManager&) = delete;

  // The longest cached prefix of `tokens` in whole blocks covering at most
  // `max_tokens` tokens (callers pass prompt_len - 1 so at least one token is
  // computed and yields logits). Takes no references, so acquire the result
  // before the next Allocate can evict it. Marks the matched blocks as used
  // now. O(tokens matched).
  PrefixMatch Match(absl::Span<const int32_t> tokens, int64_t max_tokens);

  // The same as Match, resuming from `earlier`: its leading blocks still in
  // the index from the same insertion are taken without hashing their tokens
  // (O(1) each), and the walk goes on by hashing from the first that is not.
  // So a request whose prefix was walked once (to route it) is not walked
  // again when admitted, or when it waits for room step after step.
  // REQUIRES: `earlier` came from Match on this manager for a prefix of
  // `tokens` (or is empty).
  PrefixMatch Match(absl::Span<const int32_t> tokens, int64_t max_tokens, const PrefixMatch& earlier);

  // Takes one reference on each block (a repeated id takes several): matched
  // blocks adopted by a sequence, or a held block shared further. Errors,
  // with nothing taken: InvalidArgument for an id out of range,
  // FailedPrecondition for a free block (it was never handed out).
  absl::Status Acquire(absl::Span<const int32_t> blocks);

  // Whether Allocate(n) would succeed: n <= free + evictable.
  bool CanAllocate(int64_t n) const;

  // n blocks with one reference each, free ones first, then evicting
  // least-recently-used evictable leaves. Errors, with nothing taken:
  // InvalidArgument for n < 0, ResourceExhausted for n > free + evictable.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);

  // Records that the sequence whose block table is `blocks` holds `tokens`
  // (prompt and output so far). Each full block not yet in the index is
  // inserted under the path of its prefix; where another block already caches
  // that prefix the index keeps it and the sequence's block stays private
  // (it returns to the free list when released), and the sequence's later
  // blocks are inserted under the existing path. Idempotent; call it after
  // every step. It resumes after the deepest table block already indexed at
  // its position, so a step hashes only the new full blocks (all of them
  // while the sequence's blocks are private duplicates); that block's earlier
  // path is trusted, which holds for blocks the sequence cached itself or
  // adopted from Match.
  // Errors: InvalidArgument when `blocks` is shorter than the full blocks of
  // `tokens` or holds an id out of range; FailedPrecondition when a block to
  // insert is unreferenced or already cached for another prefix. Blocks
  // inserted before the offending one stay cached (each was valid).
  absl::Status Cache(absl::Span<const int32_t> tokens, absl::Span<const int32_t> blocks);

  // Drops one reference on each block (a repeated id drops several). Cached
  // blocks left unreferenced stay in the index, marked as used now; uncached
  // ones go back to the free list. Errors, with nothing dropped:
  // InvalidArgument for an id out of range, FailedPrecondition for dropping
  // more references than a block has.
  absl::Status Release(absl::Span<const int32_t> blocks);

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_evictable_blocks() const { return num_evictable_; }
  int64_t num_referenced_blocks() const { return num_referenced_; }
  int64_t num_cached_blocks() const { return static_cast<int64_t>(children_.size()); }

 private:
  static constexpr int32_t kRoot = -1;  // parent of a sequence's first block

  // A node's key: its parent and its own tokens. Keys in children_ view the
  // tokens stored in the node itself, so each cached token is stored once.
  struct ChildKey {
    int32_t parent;
    absl::Span<const int32_t> tokens;

    friend bool operator==(const ChildKey& a, const ChildKey& b) {
      return a.parent == b.parent && a.tokens == b.tokens;
    }
    template <typename H>
    friend H AbslHashValue(H h, const ChildKey& k) {
      return H::combine(std::move(h), k.parent, k.tokens);
    }
  };

  struct Block {
    int32_t ref_count = 0;
    bool cached = false;
    // Index fields, meaningful while cached.
    int32_t parent = kRoot;
    int32_t depth = 0;  // position in every table holding it
    int32_t num_children = 0;
    int32_t held_children = 0;  // children that are referenced (see Held)
    uint64_t last_use = 0;
    uint64_t insertion = 0;       // which entry into the index this is (see PrefixMatch)
    bool in_lru = false;          // in lru_, i.e. an eviction candidate
    std::vector<int32_t> tokens;  // its own block_size tokens
  };

  static absl::Status CachedElsewhere(int32_t id);
  absl::Status CheckIds(absl::Span<const int32_t> blocks) const;
  absl::Span<const int32_t> BlockTokens(absl::Span<const int32_t> tokens, int64_t index) const;
  // Whether `id` is the index node for block `index` of `tokens` (its earlier
  // path is not compared).
  bool IsNodeAt(int32_t id, int64_t index, absl::Span<const int32_t> tokens) const;

  // A cached block is held (counted as referenced) while it or a descendant
  // has a reference. A change of held-ness moves the counters and walks up
  // only as far as it changes an ancestor's own held-ness, so acquiring or
  // releasing a whole path costs O(path).
  static bool Held(const Block& b) { return b.ref_count > 0 || b.held_children > 0; }
  void SetHeld(int32_t id);
  void SetUnheld(int32_t id);
  void AddHeldChild(int32_t parent);
  void RemoveHeldChild(int32_t parent);

  void Insert(int32_t parent, absl::Span<const int32_t> tokens, int32_t id, int32_t depth);
  void Evict(int32_t id);       // REQUIRES: an eviction candidate (in lru_)
  void Touch(int32_t id);       // marks it used now
  void UpdateLru(int32_t id);   // puts it in lru_ iff it is an unheld cached leaf

  int64_t block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;
  absl::flat_hash_map<ChildKey, int32_t> children_;  // every cached block
  std::set<std::pair<uint64_t, int32_t>> lru_;      // (last_use, block) of evictable leaves
  int64_t num_evictable_ = 0;
  int64_t num_referenced_ = 0;
  uint64_t clock_ = 0;
  uint64_t insertions_ = 0;  // entries into the index so far
};

}  // namespace mlaserve

#endif  // MLASERVE_COORDINATOR_SERVING_BLOCK_MANAGER_H_
