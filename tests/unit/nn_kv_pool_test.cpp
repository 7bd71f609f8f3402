// The decoder's paged KV pool (nn/kv_pool.h): blocks allocated as sequences grow, a fork
// that shares every block and copies none, copy-on-write of a shared tail only when a
// second sharer writes into it (counted apart), every block back in the pool once the
// sequences are gone; and on the kit's micro model, a forked sequence decodes to the same
// bits as one that never forked, alone or batched.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "common/error.h"
#include "model/ggml_file.h"
#include "nn/kv_pool.h"
#include "nn/whisper.h"
#include "test_paths.h"

namespace amanuensis::nn {
namespace {

constexpr std::int64_t B = KvPool::kBlockPositions;

// Writes positions [length, length + n) of every layer: key = position + layer / 10 +
// feature / 1000 (values negated), so a position's rows say where they came from.
void append(KvSequence& s, std::int64_t n, float tag = 0.0f) {
  const std::int64_t first = s.length();
  s.prepare(n);
  for (std::int64_t p = first; p < first + n; ++p)
    for (int layer = 0; layer < s.pool()->layers(); ++layer) {
      auto k = s.keys(layer, p);
      auto v = s.values(layer, p);
      for (std::size_t j = 0; j < k.size(); ++j) {
        k[j] = tag + static_cast<float>(p) + static_cast<float>(layer) / 10 + static_cast<float>(j) / 1000;
        v[j] = -k[j];
      }
    }
  s.commit(n);
}

// Whether positions [0, n) of every layer hold what append() wrote (with `tag` from `from` on).
bool holds(const KvSequence& s, std::int64_t n, std::int64_t from = 0, float tag = 0.0f) {
  const std::int64_t d = s.pool()->d();
  std::vector<float> k(static_cast<std::size_t>(n * d)), v(k.size());
  for (int layer = 0; layer < s.pool()->layers(); ++layer) {
    s.gather(layer, n, k, v);
    for (std::int64_t p = 0; p < n; ++p)
      for (std::int64_t j = 0; j < d; ++j) {
        const float want = (p >= from ? tag : 0.0f) + static_cast<float>(p) + static_cast<float>(layer) / 10 +
                           static_cast<float>(j) / 1000;
        if (k[p * d + j] != want || v[p * d + j] != -want) return false;
      }
  }
  return true;
}

TEST(KvPool, BlocksFollowTheLengthAndReturnOnRelease) {
  auto pool = KvPool::create(2, 8, 448);
  EXPECT_EQ(pool->stats().capacity_bytes, 0) << "nothing is reserved before a position is written";
  {
    auto s = pool->new_sequence();
    EXPECT_EQ(s.bytes(), 0);
    append(s, 1);
    EXPECT_EQ(pool->stats().blocks_in_use, 1);
    append(s, B);  // 17 positions: two blocks
    EXPECT_EQ(s.bytes(), 2 * pool->block_bytes());
    EXPECT_EQ(pool->block_bytes(), 2 * 2 * B * 8 * static_cast<std::int64_t>(sizeof(float)));
    EXPECT_TRUE(holds(s, s.length()));
    EXPECT_EQ(pool->stats().sequences, 1);
    EXPECT_GE(pool->stats().capacity_bytes, pool->stats().used_bytes);
  }
  const auto after = pool->stats();
  EXPECT_EQ(after.blocks_in_use, 0);
  EXPECT_EQ(after.used_bytes, 0);
  EXPECT_EQ(after.sequences, 0);
  EXPECT_EQ(after.peak_used_bytes, 2 * pool->block_bytes());
  EXPECT_GT(after.capacity_bytes, 0) << "released blocks stay reserved for the next sequences";
}

TEST(KvPool, ForkSharesEveryBlockAndCopiesNone) {
  auto pool = KvPool::create(2, 8, 448);
  auto a = pool->new_sequence();
  append(a, 20);  // a full block and 4 positions of a second
  const auto before = pool->stats();
  auto b = a.fork();
  const auto forked = pool->stats();
  EXPECT_EQ(forked.used_bytes, before.used_bytes) << "a fork takes no block";
  EXPECT_EQ(forked.blocks_copied, 0u);
  EXPECT_EQ(forked.forks, 1u);
  EXPECT_EQ(forked.blocks_shared_at_fork, 2u);
  EXPECT_EQ(forked.positions_shared_at_fork, 20u);
  EXPECT_EQ(b.length(), 20);
  EXPECT_TRUE(holds(b, 20));

  // the first sharer to write past the shared tail writes in place...
  append(a, 1, 100.0f);
  EXPECT_EQ(pool->stats().blocks_copied, 0u);
  EXPECT_EQ(pool->stats().blocks_in_use, 2);
  // ...the second copies the 4 positions it holds of that tail, and nothing else
  append(b, 1, 200.0f);
  auto s = pool->stats();
  EXPECT_EQ(s.blocks_copied, 1u);
  EXPECT_EQ(s.positions_copied, 4u);
  EXPECT_EQ(s.blocks_in_use, 3);
  EXPECT_TRUE(holds(a, 21, 20, 100.0f));
  EXPECT_TRUE(holds(b, 21, 20, 200.0f));
  // neither writes over the other from here on
  append(a, 30, 100.0f);
  append(b, 30, 200.0f);
  EXPECT_TRUE(holds(a, 51, 20, 100.0f));
  EXPECT_TRUE(holds(b, 51, 20, 200.0f));
  EXPECT_EQ(pool->stats().blocks_copied, 1u);
  a = KvSequence();
  b.clear();
  EXPECT_EQ(pool->stats().blocks_in_use, 0);
  EXPECT_EQ(pool->stats().sequences, 1) << "a cleared sequence is still a sequence";
}

TEST(KvPool, ForkAtABlockBoundaryNeverCopies) {
  auto pool = KvPool::create(1, 4, 448);
  auto a = pool->new_sequence();
  append(a, 2 * B);
  std::vector<KvSequence> forks;
  for (int i = 0; i < 4; ++i) forks.push_back(a.fork());
  for (int i = 0; i < 4; ++i) append(forks[static_cast<std::size_t>(i)], 5, 10.0f * static_cast<float>(i + 1));
  append(a, 5);
  EXPECT_EQ(pool->stats().blocks_copied, 0u);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(holds(forks[static_cast<std::size_t>(i)], 2 * B + 5, 2 * B, 10.0f * (i + 1)));
  EXPECT_TRUE(holds(a, 2 * B + 5));
  EXPECT_EQ(pool->stats().blocks_in_use, 2 + 5);  // the shared two, one tail each
}

TEST(KvPool, ReleasingTheOtherSharersMakesTheTailWritableInPlace) {
  auto pool = KvPool::create(1, 4, 448);
  auto a = pool->new_sequence();
  append(a, 5);
  {
    auto b = a.fork();
    append(b, 3, 50.0f);  // b writes past a in the shared block, then goes
  }
  append(a, 1, 7.0f);  // alone again: in place, over b's old positions
  EXPECT_EQ(pool->stats().blocks_copied, 0u);
  EXPECT_EQ(pool->stats().blocks_in_use, 1);
  EXPECT_TRUE(holds(a, 6, 5, 7.0f));
}

TEST(KvPool, WritingPastTheContextOrWithoutAPoolIsAnInternalError) {
  auto pool = KvPool::create(1, 4, 20);
  auto a = pool->new_sequence();
  append(a, 20);
  EXPECT_THROW(a.prepare(1), InternalError);
  KvSequence none;
  EXPECT_THROW(none.prepare(1), InternalError);
  EXPECT_EQ(none.fork().pool(), nullptr);
}

// A pool of one-block chunks (8 layers of 4096 features: 4 MiB a block): a chunk whose
// blocks are all free goes back to the system, one kept as a spare; the next sequences
// take the spare first, then chunks made again, and read what they wrote.
TEST(KvPool, WhollyFreeChunksGoBackKeepingOneSpare) {
  auto pool = KvPool::create(8, 4096, 448);
  const std::int64_t chunk = pool->block_bytes();
  {
    std::vector<KvSequence> many;
    for (int i = 0; i < 5; ++i) {
      many.push_back(pool->new_sequence());
      append(many.back(), 1);
    }
    EXPECT_EQ(pool->stats().capacity_bytes, 5 * chunk);
  }
  auto after = pool->stats();
  EXPECT_EQ(after.used_bytes, 0);
  EXPECT_EQ(after.capacity_bytes, chunk) << "one wholly free chunk is kept as the spare, the others go back";
  EXPECT_EQ(after.chunks_returned, 4u);
  {
    std::vector<KvSequence> again;
    for (int i = 0; i < 3; ++i) {
      again.push_back(pool->new_sequence());
      append(again.back(), 2, static_cast<float>(i));
    }
    EXPECT_EQ(pool->stats().capacity_bytes, 3 * chunk);
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(holds(again[static_cast<std::size_t>(i)], 2, 0, static_cast<float>(i)));
  }
  after = pool->stats();
  EXPECT_EQ(after.capacity_bytes, chunk);
  EXPECT_EQ(after.chunks_returned, 6u);
  EXPECT_EQ(after.peak_used_bytes, 5 * chunk);
}

TEST(KvPool, SequenceBytesCountWholeBlocksUpToTheLongestSequence) {
  auto pool = KvPool::create(2, 8, 448);
  EXPECT_EQ(pool->sequence_bytes(0), 0);
  EXPECT_EQ(pool->sequence_bytes(1), pool->block_bytes());
  EXPECT_EQ(pool->sequence_bytes(B + 1), 2 * pool->block_bytes());
  EXPECT_EQ(pool->sequence_bytes(10000), 28 * pool->block_bytes()) << "448 positions at most";
  auto s = pool->new_sequence();
  append(s, B + 1);
  EXPECT_EQ(s.bytes(), pool->sequence_bytes(B + 1));
}

// A window's cross-attention entry is counted while any holder keeps it; a copy is a
// second entry of the same bytes.
TEST(KvPool, AudioChargesCountWhileHeld) {
  auto pool = KvPool::create(2, 8, 448);
  {
    auto a = pool->charge_audio(1000);
    EXPECT_EQ(pool->stats().audio_bytes, 1000);
    EXPECT_EQ(pool->stats().audio_entries, 1);
    {
      const AudioCharge copy = a;
      EXPECT_EQ(pool->stats().audio_bytes, 2000);
      const AudioCharge moved = std::move(a);
      EXPECT_EQ(pool->stats().audio_bytes, 2000) << "a move hands the charge over";
      EXPECT_EQ(a.bytes(), 0);
    }
    EXPECT_EQ(pool->stats().audio_bytes, 0);
    auto s = pool->new_sequence();
    append(s, 1);
    const auto b = pool->charge_audio(500);
    EXPECT_EQ(pool->stats().peak_total_bytes, pool->block_bytes() + 500);
  }
  const auto after = pool->stats();
  EXPECT_EQ(after.audio_bytes, 0);
  EXPECT_EQ(after.audio_entries, 0);
  EXPECT_EQ(after.peak_audio_bytes, 2000);
}

// ---- on a model ----------------------------------------------------------------------

struct Micro {
  model::ModelFile file;
  std::shared_ptr<const WhisperWeights> weights;
  Decoder decoder;
  CrossAttentionCache audio;
};

const Micro& micro() {
  static const std::unique_ptr<Micro> m = [] {
    auto file = model::ModelFile::open(testing::model_path("micro.en-f16"));
    auto weights = WhisperWeights::load(file);
    std::vector<float> mel(static_cast<std::size_t>(weights->hparams.n_mels) * 3000, -0.5f);
    for (std::size_t i = 0; i < mel.size(); ++i) mel[i] += 0.3f * static_cast<float>((i * 7919) % 13) / 13.0f;
    Decoder decoder(weights);
    auto audio = decoder.cross_attention(Encoder(weights).encode(mel));
    return std::make_unique<Micro>(Micro{std::move(file), weights, decoder, std::move(audio)});
  }();
  return *m;
}

std::vector<TokenId> some_tokens(int n, int salt) {
  std::vector<TokenId> t;
  for (int i = 0; i < n; ++i) t.push_back((1000 + 7919 * i + 31 * salt) % 50000);
  return t;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// A forked sequence (which shares its prompt's blocks and copies a shared tail when it
// writes) gives the bits of a sequence that decoded the same tokens from scratch, whether
// it steps alone or batched with its origin and the unforked one.
TEST(KvSequenceOnModel, ForkedDecodesLikeUnforked) {
  const auto& m = micro();
  const Decoder& dec = m.decoder;
  const auto n_vocab = static_cast<std::size_t>(dec.n_vocab());
  const std::vector<TokenId> prompt = {50257, 50362, 440, 1000, 23};  // 5 positions: a partial block
  auto origin = dec.new_sequence();
  dec.forward(prompt, origin, m.audio);
  auto forked = origin.fork();
  auto fresh = dec.new_sequence();
  dec.forward(prompt, fresh, m.audio);

  const auto tokens = some_tokens(40, 0);  // across two block boundaries
  std::vector<float> a(n_vocab), b(n_vocab), c(n_vocab), alone(n_vocab);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "token " << i);
    // the fork steps with its origin (other tokens) and the unforked copy (the same tokens)
    const TokenId other = (tokens[i] + 17) % 50000;
    const SequenceStep batch[] = {{other, &origin, &m.audio, a}, {tokens[i], &forked, &m.audio, b},
                                  {tokens[i], &fresh, &m.audio, c}};
    dec.step(batch);
    ASSERT_TRUE(same_bits(b, c)) << "forked and unforked sequences differ";
    if (i > 0) {
      ASSERT_TRUE(same_bits(alone, c)) << "a fork stepped alone differs from the unforked sequence";
    }
    // a fork of the unforked sequence takes the next token alone, ahead of it
    if (i + 1 < tokens.size()) {
      auto ahead = fresh.fork();
      const SequenceStep one[] = {{tokens[i + 1], &ahead, &m.audio, alone}};
      dec.step(one);
    }
  }
  const auto stats = dec.kv_pool().stats();
  EXPECT_GT(stats.blocks_shared_at_fork, 0u);
  EXPECT_GT(stats.blocks_copied, 0u) << "the forks wrote into shared partial tails: copy-on-write";
}

// Decoder::cross_attention charges the decoder's pool with exactly the entry's bytes.
TEST(KvSequenceOnModel, ACrossAttentionEntryIsCountedInThePool) {
  const auto& m = micro();
  const Decoder dec(m.weights);  // a pool of its own
  std::int64_t held = 0;
  for (std::size_t layer = 0; layer < m.audio.keys.size(); ++layer)
    held += static_cast<std::int64_t>((m.audio.keys[layer].size() + m.audio.values[layer].size()) * sizeof(std::uint16_t));
  EXPECT_EQ(dec.cross_attention_bytes(), held);
  {
    AudioFeatures states{m.audio.n_ctx, m.weights->hparams.n_audio_state,
                         std::vector<float>(static_cast<std::size_t>(m.audio.n_ctx * m.weights->hparams.n_audio_state), 0.1f)};
    const auto entry = dec.cross_attention(states);
    EXPECT_EQ(dec.kv_pool().stats().audio_bytes, held);
    EXPECT_EQ(dec.kv_pool().stats().audio_entries, 1);
  }
  EXPECT_EQ(dec.kv_pool().stats().audio_bytes, 0);
}

TEST(KvSequenceOnModel, ReleasingEverySequenceEmptiesThePool) {
  const auto& m = micro();
  const Decoder dec(m.weights);  // a pool of its own
  {
    std::vector<KvSequence> beams;
    beams.push_back(dec.new_sequence());
    dec.forward(some_tokens(20, 1), beams[0], m.audio);
    for (int i = 0; i < 4; ++i) beams.push_back(beams[0].fork());
    std::vector<std::vector<float>> logits(beams.size(), std::vector<float>(static_cast<std::size_t>(dec.n_vocab())));
    for (int t = 0; t < 30; ++t) {
      std::vector<SequenceStep> batch;
      for (std::size_t j = 0; j < beams.size(); ++j) batch.push_back({(t * 13 + static_cast<int>(j)) % 50000, &beams[j], &m.audio, logits[j]});
      dec.step(batch);
    }
    const auto s = dec.kv_pool().stats();
    EXPECT_EQ(s.sequences, 5);
    EXPECT_GT(s.blocks_in_use, 0);
    EXPECT_EQ(beams[1].length(), 50);
    EXPECT_EQ(beams[1].bytes(), (50 + B - 1) / B * dec.kv_pool().block_bytes());
  }
  const auto s = dec.kv_pool().stats();
  EXPECT_EQ(s.blocks_in_use, 0);
  EXPECT_EQ(s.used_bytes, 0);
  EXPECT_EQ(s.sequences, 0);
}

TEST(KvSequenceOnModel, ASequenceOfAnotherDecoderIsAnInternalError) {
  const auto& m = micro();
  const Decoder other(m.weights);
  auto s = other.new_sequence();
  const TokenId sot = 50257;
  EXPECT_THROW(m.decoder.forward({&sot, 1}, s, m.audio), InternalError);
  std::vector<float> logits(static_cast<std::size_t>(m.decoder.n_vocab()));
  const SequenceStep step[] = {{sot, &s, &m.audio, logits}};
  EXPECT_THROW(m.decoder.step(step), InternalError);
}

}  // namespace
}  // namespace amanuensis::nn
