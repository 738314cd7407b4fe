#include "coordinator/serving/block_manager.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mlaserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;
using Tokens = std::vector<int32_t>;

uint64_t FreshSeed() { return std::random_device{}(); }

Tokens RandomTokens(std::mt19937_64& rng, int64_t n, int32_t vocab) {
  std::uniform_int_distribution<int32_t> token(0, vocab - 1);
  Tokens out(n);
  for (int32_t& t : out) t = token(rng);
  return out;
}

Tokens Concat(Tokens a, const Tokens& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Tokens Prefix(const Tokens& t, int64_t n) { return Tokens(t.begin(), t.begin() + n); }

// (free, evictable, referenced, cached)
std::array<int64_t, 4> Counts(const BlockManager& bm) {
  return {bm.num_free_blocks(), bm.num_evictable_blocks(), bm.num_referenced_blocks(), bm.num_cached_blocks()};
}

int64_t BlocksFor(int64_t tokens, int64_t block_size) { return (tokens + block_size - 1) / block_size; }

// What the coordinator does for a new prompt: adopt the cached prefix,
// allocate the rest, record the prompt. Returns the block table.
std::vector<int32_t> Admit(BlockManager& bm, const Tokens& prompt) {
  PrefixMatch match = bm.Match(prompt, static_cast<int64_t>(prompt.size()) - 1);
  EXPECT_TRUE(bm.Acquire(match.blocks).ok());
  auto fresh = bm.Allocate(BlocksFor(prompt.size(), bm.block_size()) - static_cast<int64_t>(match.blocks.size()));
  EXPECT_TRUE(fresh.ok()) << fresh.status();
  std::vector<int32_t> table = match.blocks;
  if (fresh.ok()) table.insert(table.end(), fresh->begin(), fresh->end());
  EXPECT_TRUE(bm.Cache(prompt, table).ok());
  return table;
}

class BlockManagerTest : public ::testing::Test {
 protected:
  BlockManagerTest() : seed_(FreshSeed()), rng_(seed_) {}

  void SetUp() override { RecordProperty("seed", std::to_string(seed_)); }

  Tokens Random(int64_t n) { return RandomTokens(rng_, n, 1000); }

  const uint64_t seed_;
  std::mt19937_64 rng_;
};

TEST_F(BlockManagerTest, StartsWithEveryBlockFree) {
  BlockManager bm(10, 4);
  EXPECT_EQ(bm.num_blocks(), 10);
  EXPECT_EQ(bm.block_size(), 4);
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{10, 0, 0, 0}));
  PrefixMatch match = bm.Match(Random(20), 20);
  EXPECT_THAT(match.blocks, IsEmpty());
  EXPECT_EQ(match.num_tokens, 0);
}

TEST_F(BlockManagerTest, SharesFullBlocksOfCommonPrefix) {
  SCOPED_TRACE(seed_);
  BlockManager bm(16, 4);
  const Tokens shared = Random(8);
  const Tokens a = Concat(shared, Random(2));
  std::vector<int32_t> table_a = Admit(bm, a);
  ASSERT_EQ(table_a.size(), 3u);
  EXPECT_EQ(bm.num_cached_blocks(), 2);  // the third block is partial

  const Tokens b = Concat(shared, Random(5));
  PrefixMatch match = bm.Match(b, b.size() - 1);
  EXPECT_THAT(match.blocks, ElementsAre(table_a[0], table_a[1]));
  EXPECT_EQ(match.num_tokens, 8);
  std::vector<int32_t> table_b = Admit(bm, b);
  ASSERT_EQ(table_b.size(), 4u);
  EXPECT_EQ(table_b[0], table_a[0]);
  EXPECT_EQ(table_b[1], table_a[1]);
  EXPECT_EQ(bm.num_cached_blocks(), 3);  // b's third block is full and new
  EXPECT_EQ(bm.num_referenced_blocks(), 5);

  const Tokens c = Concat(Prefix(b, 12), Random(4));
  EXPECT_THAT(bm.Match(c, c.size()).blocks, ElementsAre(table_b[0], table_b[1], table_b[2]));
}

TEST_F(BlockManagerTest, PartialLastBlockIsNeverCached) {
  SCOPED_TRACE(seed_);
  BlockManager bm(8, 4);
  Tokens tokens = Random(7);
  std::vector<int32_t> table = Admit(bm, tokens);
  EXPECT_EQ(bm.num_cached_blocks(), 1);
  EXPECT_EQ(bm.Match(tokens, 100).num_tokens, 4);

  tokens.push_back(Random(1)[0]);  // the step that fills block 1
  ASSERT_TRUE(bm.Cache(tokens, table).ok());
  EXPECT_EQ(bm.num_cached_blocks(), 2);
  EXPECT_THAT(bm.Match(tokens, 100).blocks, ElementsAreArray(table));
}

TEST_F(BlockManagerTest, MaxTokensCapsTheMatch) {
  SCOPED_TRACE(seed_);
  BlockManager bm(8, 4);
  const Tokens tokens = Random(12);
  std::vector<int32_t> table = bm.Allocate(3).value();
  ASSERT_TRUE(bm.Cache(tokens, table).ok());
  EXPECT_EQ(bm.Match(tokens, 12).blocks.size(), 3u);
  EXPECT_EQ(bm.Match(tokens, 11).blocks.size(), 2u);  // prompt_len - 1
  EXPECT_EQ(bm.Match(tokens, 3).blocks.size(), 0u);
  EXPECT_EQ(bm.Match(tokens, -1).blocks.size(), 0u);
  EXPECT_EQ(bm.Match(Prefix(tokens, 9), 100).blocks.size(), 2u);
}

TEST_F(BlockManagerTest, MatchStopsAtTheFirstDifferentBlock) {
  SCOPED_TRACE(seed_);
  BlockManager bm(8, 4);
  const Tokens tokens = Random(12);
  std::vector<int32_t> table = bm.Allocate(3).value();
  ASSERT_TRUE(bm.Cache(tokens, table).ok());
  Tokens query = tokens;
  query[5] += 1;  // block 1 differs, block 2 is equal but has another prefix
  EXPECT_THAT(bm.Match(query, 12).blocks, ElementsAre(table[0]));
}

TEST_F(BlockManagerTest, DuplicateBlockStaysPrivateAndLaterBlocksJoinTheIndex) {
  SCOPED_TRACE(seed_);
  BlockManager bm(8, 4);
  const Tokens prompt = Random(6);
  // Both admitted before either is cached, as in one scheduling step.
  std::vector<int32_t> a = bm.Allocate(2).value();
  std::vector<int32_t> b = bm.Allocate(2).value();
  ASSERT_TRUE(bm.Cache(prompt, a).ok());
  ASSERT_TRUE(bm.Cache(prompt, b).ok());
  EXPECT_EQ(bm.num_cached_blocks(), 1);
  EXPECT_THAT(bm.Match(prompt, 6).blocks, ElementsAre(a[0]));

  // b completes its second block differently from a: it is indexed under
  // a's first block, which b does not hold.
  const Tokens b_tokens = Concat(prompt, Random(2));
  ASSERT_TRUE(bm.Cache(b_tokens, b).ok());
  EXPECT_EQ(bm.num_cached_blocks(), 2);
  EXPECT_THAT(bm.Match(b_tokens, 8).blocks, ElementsAre(a[0], b[1]));

  // a's first block is still needed as b[1]'s parent, so it is not evictable.
  ASSERT_TRUE(bm.Release(a).ok());
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{5, 0, 3, 2}));
  EXPECT_FALSE(bm.CanAllocate(6));

  ASSERT_TRUE(bm.Release(b).ok());  // b[0] was private: back to the free list
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{6, 2, 0, 2}));
  EXPECT_TRUE(bm.CanAllocate(8));
}

TEST_F(BlockManagerTest, CacheIsIdempotent) {
  SCOPED_TRACE(seed_);
  BlockManager bm(8, 2);
  const Tokens tokens = Random(7);
  std::vector<int32_t> table = Admit(bm, tokens);
  const auto before = Counts(bm);
  ASSERT_TRUE(bm.Cache(tokens, table).ok());
  ASSERT_TRUE(bm.Cache(Prefix(tokens, 4), table).ok());
  EXPECT_EQ(Counts(bm), before);
  EXPECT_THAT(bm.Match(tokens, 7).blocks, ElementsAre(table[0], table[1], table[2]));
}

TEST_F(BlockManagerTest, EvictsLeastRecentlyReleasedFirst) {
  SCOPED_TRACE(seed_);
  BlockManager bm(6, 2);
  std::vector<int32_t> a = Admit(bm, Random(4));
  std::vector<int32_t> b = Admit(bm, Random(4));
  std::vector<int32_t> c = Admit(bm, Random(4));
  ASSERT_TRUE(bm.Release(a).ok());
  ASSERT_TRUE(bm.Release(c).ok());
  ASSERT_TRUE(bm.Release(b).ok());
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{0, 6, 0, 6}));

  // Each sequence's leaf goes before its first block.
  EXPECT_THAT(bm.Allocate(2).value(), ElementsAre(a[1], a[0]));
  EXPECT_THAT(bm.Allocate(2).value(), ElementsAre(c[1], c[0]));
  EXPECT_THAT(bm.Allocate(2).value(), ElementsAre(b[1], b[0]));
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{0, 0, 6, 0}));
}

TEST_F(BlockManagerTest, ParentIsEvictedOnlyAfterItsChildrenEvenIfOlder) {
  SCOPED_TRACE(seed_);
  BlockManager bm(3, 2);
  std::vector<int32_t> chain = Admit(bm, Random(4));
  std::vector<int32_t> other = Admit(bm, Random(2));
  ASSERT_TRUE(bm.Release({chain[0]}).ok());  // oldest, but still a parent
  EXPECT_EQ(bm.num_evictable_blocks(), 0);
  ASSERT_TRUE(bm.Release({chain[1]}).ok());
  ASSERT_TRUE(bm.Release(other).ok());
  EXPECT_THAT(bm.Allocate(1).value(), ElementsAre(chain[1]));
  EXPECT_THAT(bm.Allocate(1).value(), ElementsAre(chain[0]));
  EXPECT_THAT(bm.Allocate(1).value(), ElementsAre(other[0]));
}

TEST_F(BlockManagerTest, MatchRefreshesRecency) {
  SCOPED_TRACE(seed_);
  BlockManager bm(4, 2);
  const Tokens old_prompt = Random(4);
  std::vector<int32_t> a = Admit(bm, old_prompt);
  std::vector<int32_t> b = Admit(bm, Random(4));
  ASSERT_TRUE(bm.Release(a).ok());
  ASSERT_TRUE(bm.Release(b).ok());
  EXPECT_EQ(bm.Match(old_prompt, 4).blocks.size(), 2u);
  EXPECT_THAT(bm.Allocate(2).value(), ElementsAre(b[1], b[0]));
}

TEST_F(BlockManagerTest, FreeBlocksGoBeforeAnyEviction) {
  SCOPED_TRACE(seed_);
  BlockManager bm(6, 2);
  std::vector<int32_t> a = Admit(bm, Random(4));
  ASSERT_TRUE(bm.Release(a).ok());
  std::vector<int32_t> fresh = bm.Allocate(4).value();
  EXPECT_THAT(fresh, ::testing::Each(::testing::AllOf(::testing::Ne(a[0]), ::testing::Ne(a[1]))));
  EXPECT_EQ(bm.num_cached_blocks(), 2);
}

TEST_F(BlockManagerTest, ReferencedBlocksAreNeverEvicted) {
  SCOPED_TRACE(seed_);
  BlockManager bm(8, 2);
  const Tokens prompt = Random(6);
  std::vector<int32_t> first = Admit(bm, prompt);
  ASSERT_TRUE(bm.Release(first).ok());
  // A second request adopts the cached prefix, then the pool is drained.
  std::vector<int32_t> second = Admit(bm, Concat(Prefix(prompt, 4), Random(3)));
  ASSERT_EQ(second[0], first[0]);
  ASSERT_EQ(second[1], first[1]);
  const int64_t available = bm.num_free_blocks() + bm.num_evictable_blocks();
  std::vector<int32_t> rest = bm.Allocate(available).value();
  EXPECT_THAT(rest, ::testing::Not(::testing::Contains(first[0])));
  EXPECT_THAT(rest, ::testing::Not(::testing::Contains(first[1])));
  EXPECT_THAT(rest, ::testing::Contains(first[2]));  // unreferenced leaf
  EXPECT_THAT(bm.Match(prompt, 6).blocks, ElementsAre(first[0], first[1]));
}

TEST_F(BlockManagerTest, ResourceExhaustedTakesNothing) {
  BlockManager bm(4, 2);
  std::vector<int32_t> all = bm.Allocate(4).value();
  EXPECT_THAT(all, UnorderedElementsAre(0, 1, 2, 3));
  EXPECT_FALSE(bm.CanAllocate(1));
  EXPECT_EQ(bm.Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(bm.Allocate(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bm.Allocate(0).value(), IsEmpty());
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{0, 0, 4, 0}));

  ASSERT_TRUE(bm.Release({all[0], all[1]}).ok());
  EXPECT_EQ(bm.Allocate(3).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{2, 0, 2, 0}));
}

TEST_F(BlockManagerTest, MisuseIsRejectedWithoutChangingState) {
  SCOPED_TRACE(seed_);
  BlockManager bm(6, 2);
  const Tokens tokens = Random(4);
  std::vector<int32_t> table = Admit(bm, tokens);  // 2 cached, referenced
  const int32_t spare = bm.Allocate(1).value()[0];
  const int32_t free_block = bm.Allocate(1).value()[0];
  ASSERT_TRUE(bm.Release({free_block}).ok());
  const auto before = Counts(bm);

  EXPECT_EQ(bm.Release({free_block}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(bm.Release({spare, spare}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(bm.Release({table[0], 6}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.Release({-1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.Acquire({table[0], free_block}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(bm.Acquire({table[0], 99}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.Cache(tokens, {table[0]}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bm.Cache(tokens, {table[0], 7}).code(), absl::StatusCode::kInvalidArgument);
  // A new prefix whose block is not held, or is already cached elsewhere.
  const Tokens other = Concat(Prefix(tokens, 2), Random(2));
  EXPECT_EQ(bm.Cache(other, {table[0], free_block}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(bm.Cache(other, {table[0], table[0]}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Counts(bm), before);

  // The rejected calls left the references as they were.
  EXPECT_TRUE(bm.Release({spare}).ok());
  EXPECT_TRUE(bm.Release(table).ok());
  EXPECT_EQ(Counts(bm), (std::array<int64_t, 4>{4, 2, 0, 2}));
}

// Resuming from an earlier match trusts only blocks still cached from the
// same insertion: one evicted and reused for another prefix is walked again.
TEST_F(BlockManagerTest, MatchResumesFromAnEarlierMatchOnlyWhereItStillHolds) {
  BlockManager bm(3, 2);
  const Tokens a = {1, 2, 3, 4, 5};
  std::vector<int32_t> table = *bm.Allocate(3);
  ASSERT_TRUE(bm.Cache(a, table).ok());
  ASSERT_TRUE(bm.Release(table).ok());
  const PrefixMatch earlier = bm.Match(a, 4);
  ASSERT_EQ(earlier.blocks.size(), 2u);
  ASSERT_EQ(earlier.insertions.size(), 2u);
  // Unchanged: the same blocks, and one more cached since is found by walking on.
  EXPECT_THAT(bm.Match(a, 4, earlier).blocks, ElementsAreArray(earlier.blocks));
  // The second block is evicted and reused for another prefix at the same depth
  // under the same parent: its id alone would mislead.
  ASSERT_TRUE(bm.Acquire({earlier.blocks[0]}).ok());
  std::vector<int32_t> fresh = *bm.Allocate(2);  // the free block, then the evictable leaf
  ASSERT_THAT(fresh, ::testing::Contains(earlier.blocks[1]));
  const int32_t other = fresh[0] == earlier.blocks[1] ? fresh[1] : fresh[0];
  const Tokens b = {1, 2, 9, 9, 9};
  ASSERT_TRUE(bm.Cache(b, {earlier.blocks[0], earlier.blocks[1], other}).ok());
  const PrefixMatch resumed = bm.Match(a, 4, earlier);
  EXPECT_THAT(resumed.blocks, ElementsAre(earlier.blocks[0]));
  EXPECT_EQ(resumed.num_tokens, 2);
  EXPECT_THAT(bm.Match(b, 4, earlier).blocks, ElementsAre(earlier.blocks[0], earlier.blocks[1]));
}

TEST_F(BlockManagerTest, AcquireSharesAPrivateBlock) {
  BlockManager bm(2, 2);
  const int32_t block = bm.Allocate(1).value()[0];
  ASSERT_TRUE(bm.Acquire({block}).ok());
  ASSERT_TRUE(bm.Release({block}).ok());
  EXPECT_EQ(bm.num_free_blocks(), 1);
  ASSERT_TRUE(bm.Release({block}).ok());
  EXPECT_EQ(bm.num_free_blocks(), 2);
}

// Drives a BlockManager through random admissions, growth and releases of
// sequences sharing a few prefixes, against a shadow of the index (block ->
// the whole prefix it caches), checking every invariant after every step.
class RandomizedDriver {
 public:
  RandomizedDriver(uint64_t seed, int64_t num_blocks, int64_t block_size, int32_t vocab)
      : rng_(seed), bm_(num_blocks, block_size), bs_(block_size), vocab_(vocab) {
    for (int i = 0; i < 4; ++i) prefixes_.push_back(Draw(Uniform(0, 4 * bs_)));
  }

  void Step() {
    const int op = Uniform(0, 9);
    if (op < 3 && live_.size() < 8) {
      Admit();
    } else if (op < 7 && !live_.empty()) {
      Grow(Uniform(0, live_.size() - 1));
    } else if (op < 8 && !live_.empty()) {
      Finish(Uniform(0, live_.size() - 1));
    } else if (op < 9 && !live_.empty()) {
      Recache(Uniform(0, live_.size() - 1));
    } else {
      Probe();
    }
    CheckInvariants();
  }

  int64_t evictions() const { return evictions_; }
  int64_t shared_blocks() const { return shared_blocks_; }

 private:
  struct Seq {
    Tokens tokens;
    std::vector<int32_t> table;
  };

  int64_t Uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  Tokens Draw(int64_t n) { return RandomTokens(rng_, n, vocab_); }
  Tokens RandomPrompt() { return Concat(prefixes_[Uniform(0, prefixes_.size() - 1)], Draw(Uniform(1, 3 * bs_))); }

  void Admit() {
    Seq seq{RandomPrompt(), {}};
    PrefixMatch match = MatchAndCheck(seq.tokens, seq.tokens.size() - 1);
    ASSERT_TRUE(bm_.Acquire(match.blocks).ok());
    shared_blocks_ += match.blocks.size();
    seq.table = match.blocks;
    if (!Extend(seq)) {
      ASSERT_TRUE(bm_.Release(match.blocks).ok());
      return;
    }
    ASSERT_TRUE(bm_.Cache(seq.tokens, seq.table).ok());
    ShadowCache(seq);
    live_.push_back(std::move(seq));
  }

  void Grow(size_t i) {
    Seq& seq = live_[i];
    if (seq.tokens.size() > 12 * bs_) return Finish(i);
    const Tokens more = Draw(Uniform(1, bs_ + 1));
    seq.tokens.insert(seq.tokens.end(), more.begin(), more.end());
    if (!Extend(seq)) return Finish(i);  // preempted
    ASSERT_TRUE(bm_.Cache(seq.tokens, seq.table).ok());
    ShadowCache(seq);
  }

  // A block the sequence kept private because another cached its prefix
  // joins the index once that other block was evicted; a repeat is a no-op.
  void Recache(size_t i) {
    const Seq& seq = live_[i];
    ASSERT_TRUE(bm_.Cache(seq.tokens, seq.table).ok());
    ShadowCache(seq);
    const auto before = Counts(bm_);
    ASSERT_TRUE(bm_.Cache(seq.tokens, seq.table).ok());
    EXPECT_EQ(Counts(bm_), before);
  }

  void Finish(size_t i) {
    ASSERT_TRUE(bm_.Release(live_[i].table).ok());
    live_.erase(live_.begin() + i);
  }

  // A fresh query, or one matched before (possibly many evictions ago)
  // resumed from that earlier match, which may be stale.
  void Probe() {
    if (!earlier_.empty() && Uniform(0, 1) == 0) {
      auto& [query, earlier] = earlier_[Uniform(0, earlier_.size() - 1)];
      earlier = MatchAndCheck(query, Uniform(-1, query.size() + 1), &earlier);
      return;
    }
    Tokens query = RandomPrompt();
    if (!live_.empty() && Uniform(0, 1) == 0) query = live_[Uniform(0, live_.size() - 1)].tokens;
    PrefixMatch match = MatchAndCheck(query, Uniform(-1, query.size() + 1));
    if (earlier_.size() < 8) earlier_.emplace_back(std::move(query), std::move(match));
  }

  // Grows the table to cover the tokens; false (nothing taken) if the pool
  // cannot.
  bool Extend(Seq& seq) {
    const int64_t need = BlocksFor(seq.tokens.size(), bs_) - static_cast<int64_t>(seq.table.size());
    const bool can = bm_.CanAllocate(need);
    const int64_t free_before = bm_.num_free_blocks();
    auto fresh = bm_.Allocate(need);
    EXPECT_EQ(can, fresh.ok());
    if (!fresh.ok()) {
      EXPECT_EQ(fresh.status().code(), absl::StatusCode::kResourceExhausted);
      return false;
    }
    CheckHandedOut(*fresh, std::max<int64_t>(0, need - free_before));
    seq.table.insert(seq.table.end(), fresh->begin(), fresh->end());
    return true;
  }

  // Fresh blocks must be held by no live sequence; those the shadow still
  // caches were evicted, which must have taken whole unreferenced subtrees
  // and only once the free list ran out.
  void CheckHandedOut(const std::vector<int32_t>& fresh, int64_t expected_evictions) {
    std::set<int32_t> live_blocks;
    for (const Seq& s : live_) live_blocks.insert(s.table.begin(), s.table.end());
    std::vector<Tokens> evicted;
    for (int32_t b : fresh) {
      EXPECT_FALSE(live_blocks.count(b)) << "block " << b << " handed out twice";
      auto it = prefix_of_.find(b);
      if (it == prefix_of_.end()) continue;
      evicted.push_back(it->second);
      block_of_.erase(it->second);
      prefix_of_.erase(it);
    }
    EXPECT_EQ(static_cast<int64_t>(evicted.size()), expected_evictions);
    evictions_ += evicted.size();
    for (const Tokens& gone : evicted) {
      auto next = block_of_.lower_bound(gone);
      const bool descendant_left = next != block_of_.end() && next->first.size() > gone.size() &&
                                   std::equal(gone.begin(), gone.end(), next->first.begin());
      EXPECT_FALSE(descendant_left) << "evicted a block whose descendant stays cached";
    }
  }

  // The shadow of Cache: a full block whose prefix is not indexed yet joins.
  void ShadowCache(const Seq& seq) {
    for (size_t i = 0; i < seq.tokens.size() / bs_; ++i) {
      Tokens prefix = Prefix(seq.tokens, (i + 1) * bs_);
      if (block_of_.count(prefix)) continue;
      EXPECT_FALSE(prefix_of_.count(seq.table[i]));
      prefix_of_[seq.table[i]] = prefix;
      block_of_[std::move(prefix)] = seq.table[i];
    }
  }

  PrefixMatch MatchAndCheck(const Tokens& query, int64_t max_tokens, const PrefixMatch* earlier = nullptr) {
    PrefixMatch match = earlier != nullptr ? bm_.Match(query, max_tokens, *earlier) : bm_.Match(query, max_tokens);
    std::vector<int32_t> expected;
    for (int64_t end = bs_; end <= std::min<int64_t>(query.size(), max_tokens); end += bs_) {
      auto it = block_of_.find(Prefix(query, end));
      if (it == block_of_.end()) break;
      expected.push_back(it->second);
    }
    EXPECT_THAT(match.blocks, ElementsAreArray(expected));
    EXPECT_EQ(match.num_tokens, static_cast<int64_t>(match.blocks.size()) * bs_);
    for (size_t i = 0; i < match.blocks.size(); ++i) {
      auto cached = prefix_of_.find(match.blocks[i]);
      EXPECT_TRUE(cached != prefix_of_.end() && cached->second == Prefix(query, (i + 1) * bs_))
          << "matched block " << match.blocks[i] << " caches other tokens";
    }
    return match;
  }

  void CheckInvariants() {
    EXPECT_EQ(bm_.num_free_blocks() + bm_.num_evictable_blocks() + bm_.num_referenced_blocks(), bm_.num_blocks());
    EXPECT_EQ(bm_.num_cached_blocks(), static_cast<int64_t>(block_of_.size()));
    CheckTree();
    CheckLiveTables();
    CheckCounts();
  }

  // Every cached block's parent is cached: eviction only takes leaves.
  void CheckTree() {
    for (const auto& [prefix, block] : block_of_) {
      if (prefix.size() > bs_) EXPECT_TRUE(block_of_.count(Prefix(prefix, prefix.size() - bs_)));
    }
  }

  // Live tables are disjoint except for cached blocks shared at the same
  // position, and a cached block holds exactly the prefix its holders have.
  void CheckLiveTables() {
    std::map<int32_t, size_t> owner;
    for (size_t s = 0; s < live_.size(); ++s) {
      const Seq& seq = live_[s];
      EXPECT_EQ(static_cast<int64_t>(seq.table.size()), BlocksFor(seq.tokens.size(), bs_));
      std::set<int32_t> mine(seq.table.begin(), seq.table.end());
      EXPECT_EQ(mine.size(), seq.table.size()) << "a table repeats a block";
      for (size_t i = 0; i < seq.table.size(); ++i) {
        const int32_t b = seq.table[i];
        auto cached = prefix_of_.find(b);
        if (cached != prefix_of_.end()) {
          EXPECT_EQ(cached->second, Prefix(seq.tokens, (i + 1) * bs_));
        } else {
          auto [it, first] = owner.emplace(b, s);
          EXPECT_TRUE(first) << "private block " << b << " in two live tables";
        }
      }
    }
  }

  // A cached block is referenced while a live table holds it or one of its
  // descendants.
  void CheckCounts() {
    std::set<int32_t> live_blocks;
    for (const Seq& s : live_) live_blocks.insert(s.table.begin(), s.table.end());
    std::set<int32_t> held;
    int64_t private_live = 0;
    for (int32_t b : live_blocks) {
      auto cached = prefix_of_.find(b);
      if (cached == prefix_of_.end()) {
        ++private_live;
        continue;
      }
      for (size_t end = bs_; end <= cached->second.size(); end += bs_) {
        held.insert(block_of_.at(Prefix(cached->second, end)));
      }
    }
    const int64_t cached = block_of_.size();
    const int64_t referenced = private_live + held.size();
    EXPECT_EQ(bm_.num_referenced_blocks(), referenced);
    EXPECT_EQ(bm_.num_evictable_blocks(), cached - static_cast<int64_t>(held.size()));
    EXPECT_EQ(bm_.num_free_blocks(), bm_.num_blocks() - referenced - (cached - static_cast<int64_t>(held.size())));
  }

  std::mt19937_64 rng_;
  BlockManager bm_;
  const size_t bs_;
  const int32_t vocab_;
  std::vector<Tokens> prefixes_;
  std::vector<Seq> live_;
  std::vector<std::pair<Tokens, PrefixMatch>> earlier_;  // queries matched before, with that match
  std::map<Tokens, int32_t> block_of_;  // shadow index: whole prefix -> block
  std::map<int32_t, Tokens> prefix_of_;
  int64_t evictions_ = 0;
  int64_t shared_blocks_ = 0;
};

TEST(BlockManagerRandomizedTest, MatchesShadowIndexUnderRandomTraffic) {
  const uint64_t seed = FreshSeed();
  std::mt19937_64 rng(seed);
  int64_t evictions = 0;
  int64_t shared = 0;
  for (int round = 0; round < 24; ++round) {
    const int64_t block_size = std::array<int64_t, 3>{1, 2, 4}[round % 3];
    const int64_t num_blocks = std::uniform_int_distribution<int64_t>(8, 64)(rng);
    const int32_t vocab = std::array<int32_t, 4>{2, 3, 5, 1000}[round % 4];
    const uint64_t round_seed = rng();
    SCOPED_TRACE(testing::Message() << "seed " << seed << " round " << round << " round_seed " << round_seed
                                    << " block_size " << block_size << " num_blocks " << num_blocks);
    RandomizedDriver driver(round_seed, num_blocks, block_size, vocab);
    for (int step = 0; step < 2000; ++step) {
      driver.Step();
      ASSERT_FALSE(::testing::Test::HasFailure()) << "step " << step;
    }
    evictions += driver.evictions();
    shared += driver.shared_blocks();
  }
  // The traffic must exercise what it is meant to.
  EXPECT_GT(evictions, 1000);
  EXPECT_GT(shared, 1000);
}

}  // namespace
}  // namespace mlaserve
