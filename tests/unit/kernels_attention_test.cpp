// The few-query attention head used by decoder steps: equal to the reference attention
// within float rounding, and each query's output independent (to the bit) of the other
// queries computed with it, causal or not. Attention over keys and values in blocks (a
// decoder sequence's paged KV cache) gives the bits of the same rows made contiguous, on
// every backend and for any split into blocks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"

namespace amanuensis::kernels::cpu {
namespace {

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// All heads of one attention call through the few-query kernel.
std::vector<float> few_query_attention(const std::vector<float>& q, std::int64_t n_q, const std::vector<float>& k,
                                       const std::vector<float>& v, std::int64_t n_kv, int n_head, std::int64_t d,
                                       std::int64_t causal_offset) {
  std::vector<float> out(static_cast<std::size_t>(n_q * d));
  const std::int64_t hd = d / n_head;
  for (int h = 0; h < n_head; ++h)
    attention_head_few_queries(q.data() + h * hd, n_q, k.data() + h * hd, v.data() + h * hd, n_kv, d, hd,
                               causal_offset, out.data() + h * hd);
  return out;
}

struct Shape {
  std::int64_t n_q, n_kv;
  int n_head;
  std::int64_t d, causal_offset;
};

TEST(FewQueryAttention, MatchesTheReference) {
  for (const Shape s : {Shape{1, 1500, 6, 384, -1}, Shape{5, 1500, 6, 384, -1}, Shape{1, 37, 4, 256, 36},
                        Shape{3, 40, 4, 260, 37}, Shape{2, 9, 3, 60, -1}}) {
    SCOPED_TRACE(::testing::Message() << "n_q " << s.n_q << " n_kv " << s.n_kv << " d " << s.d);
    const auto q = random_values(static_cast<std::size_t>(s.n_q * s.d), 1);
    const auto k = random_values(static_cast<std::size_t>(s.n_kv * s.d), 2);
    const auto v = random_values(static_cast<std::size_t>(s.n_kv * s.d), 3);
    std::vector<float> expected(q.size());
    attention(q, s.n_q, k, v, s.n_kv, s.n_head, s.d, s.causal_offset, expected);
    const auto got = few_query_attention(q, s.n_q, k, v, s.n_kv, s.n_head, s.d, s.causal_offset);
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-4) << "at " << i;
  }
}

TEST(FewQueryAttention, EachQueryIsIndependentOfTheOthers) {
  const std::int64_t n_kv = 300, d = 384, n_q = 7;
  const int n_head = 6;
  const auto q = random_values(static_cast<std::size_t>(n_q * d), 4);
  const auto k = random_values(static_cast<std::size_t>(n_kv * d), 5);
  const auto v = random_values(static_cast<std::size_t>(n_kv * d), 6);
  for (const std::int64_t causal_offset : {std::int64_t{-1}, std::int64_t{250}}) {
    const auto together = few_query_attention(q, n_q, k, v, n_kv, n_head, d, causal_offset);
    for (std::int64_t r = 0; r < n_q; ++r) {
      const std::vector<float> one(q.begin() + r * d, q.begin() + (r + 1) * d);
      // alone, query r sees what it saw as row r of the batch
      const auto alone = few_query_attention(one, 1, k, v, n_kv, n_head, d, causal_offset < 0 ? -1 : causal_offset + r);
      EXPECT_EQ(std::memcmp(alone.data(), together.data() + r * d, static_cast<std::size_t>(d) * sizeof(float)), 0)
          << "query " << r << ", causal offset " << causal_offset;
    }
  }
}

// Keys and values stored as halves (a window's cross-attention entry) give the bits of the
// float kernel over the same values widened, for query counts 1-16, head sizes 64 (every
// Whisper model's) and 16, key counts with and without a remainder to the half kernel's
// groups of eight keys, causal or not.
TEST(FewQueryAttention, HalfKeysAndValuesGiveTheBitsOfTheirWidenedFloats) {
  if (!have_avx2_fma_f16c()) GTEST_SKIP() << "this CPU lacks AVX2/FMA/F16C: the half kernel widens and takes the float path";
  for (const Shape s : {Shape{1, 1500, 6, 384, -1}, Shape{5, 1500, 6, 384, -1}, Shape{16, 1500, 8, 512, -1},
                        Shape{1, 37, 4, 256, -1}, Shape{3, 45, 4, 256, 37}, Shape{2, 9, 2, 128, -1},
                        Shape{4, 7, 2, 32, 2}}) {
    SCOPED_TRACE(::testing::Message() << "n_q " << s.n_q << " n_kv " << s.n_kv << " d " << s.d);
    const auto q = random_values(static_cast<std::size_t>(s.n_q * s.d), 7);
    const auto k32 = random_values(static_cast<std::size_t>(s.n_kv * s.d), 8);
    const auto v32 = random_values(static_cast<std::size_t>(s.n_kv * s.d), 9);
    std::vector<std::uint16_t> k16(k32.size()), v16(v32.size());
    floats_to_halves(k32.data(), k16.data(), static_cast<std::int64_t>(k16.size()));
    floats_to_halves(v32.data(), v16.data(), static_cast<std::int64_t>(v16.size()));
    std::vector<float> k(k16.size()), v(v16.size());
    halves_to_floats(k16.data(), k.data(), static_cast<std::int64_t>(k.size()));
    halves_to_floats(v16.data(), v.data(), static_cast<std::int64_t>(v.size()));
    const auto expected = few_query_attention(q, s.n_q, k, v, s.n_kv, s.n_head, s.d, s.causal_offset);
    std::vector<float> got(expected.size());
    const std::int64_t hd = s.d / s.n_head;
    // the halves in rows (a head's slice of each row) and head by head (a head's rows
    // together, as a window's cross-attention entry holds them): the same bits
    std::vector<std::uint16_t> k_heads(k16.size()), v_heads(v16.size());
    for (int h = 0; h < s.n_head; ++h)
      for (std::int64_t j = 0; j < s.n_kv; ++j)
        for (std::int64_t i = 0; i < hd; ++i) {
          k_heads[(h * s.n_kv + j) * hd + i] = k16[j * s.d + h * hd + i];
          v_heads[(h * s.n_kv + j) * hd + i] = v16[j * s.d + h * hd + i];
        }
    for (bool by_head : {false, true}) {
      for (int h = 0; h < s.n_head; ++h) {
        const std::int64_t at = by_head ? h * s.n_kv * hd : h * hd;
        attention_head_few_queries_f16(q.data() + h * hd, s.n_q, s.d, (by_head ? k_heads : k16).data() + at,
                                       (by_head ? v_heads : v16).data() + at, s.n_kv, by_head ? hd : s.d, hd,
                                       s.causal_offset, got.data() + h * hd);
      }
      for (std::size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(std::memcmp(&got[i], &expected[i], sizeof(float)), 0)
            << (by_head ? "head by head" : "rows") << " at " << i << ": " << got[i] << " vs " << expected[i];
    }
  }
}

// k and v cut into blocks of `block` rows (the last one shorter), as a KV pool holds them.
std::vector<KvBlockView> blocks_of(const std::vector<float>& k, const std::vector<float>& v, std::int64_t n_kv,
                                   std::int64_t d, std::int64_t block) {
  std::vector<KvBlockView> out;
  for (std::int64_t first = 0; first < n_kv; first += block) {
    const auto n = static_cast<std::size_t>(std::min(block, n_kv - first) * d);
    out.push_back({{k.data() + first * d, n}, {v.data() + first * d, n}});
  }
  return out;
}

TEST(PagedAttention, SameBitsAsContiguousOnEveryBackend) {
  std::vector<std::shared_ptr<const Backend>> backends{make_reference_backend(Precision::Fp32),
                                                       make_backend({.precision = Precision::Fp32}),
                                                       make_reference_backend(Precision::Bf16)};
  if (cpu_has_native_bf16()) backends.push_back(make_backend({.precision = Precision::Bf16}));
  // decoder steps (one query, causal at the last key), a few queries, and a prompt pass
  for (const Shape s : {Shape{1, 37, 6, 384, 36}, Shape{1, 16, 4, 256, 15}, Shape{3, 40, 4, 260, 37},
                        Shape{1, 448, 8, 512, 447}, Shape{40, 60, 6, 384, 20}}) {
    const auto q = random_values(static_cast<std::size_t>(s.n_q * s.d), 7);
    const auto k = random_values(static_cast<std::size_t>(s.n_kv * s.d), 8);
    const auto v = random_values(static_cast<std::size_t>(s.n_kv * s.d), 9);
    for (const auto& be : backends) {
      std::vector<float> contiguous(q.size());
      be->attention(q, s.n_q, k, v, s.n_kv, s.n_head, s.d, s.causal_offset, contiguous);
      for (const std::int64_t block : {std::int64_t{1}, std::int64_t{7}, std::int64_t{16}, s.n_kv}) {
        SCOPED_TRACE(::testing::Message() << be->name() << ": n_q " << s.n_q << " n_kv " << s.n_kv << " block " << block);
        std::vector<float> paged(q.size(), -1.0f);
        be->attention_paged(q, s.n_q, blocks_of(k, v, s.n_kv, s.d, block), s.n_kv, s.n_head, s.d, s.causal_offset,
                            paged);
        EXPECT_EQ(std::memcmp(paged.data(), contiguous.data(), paged.size() * sizeof(float)), 0);
      }
    }
  }
}

TEST(PagedAttention, BlocksBeyondTheKeysAreIgnoredAndTooFewAreAnInternalError) {
  const std::int64_t n_kv = 20, d = 64;
  const auto q = random_values(static_cast<std::size_t>(d), 10);
  const auto k = random_values(static_cast<std::size_t>(32 * d), 11);
  const auto v = random_values(static_cast<std::size_t>(32 * d), 12);
  for (const auto& be : {make_reference_backend(Precision::Fp32), make_backend({.precision = Precision::Fp32})}) {
    std::vector<float> contiguous(q.size()), paged(q.size());
    be->attention(q, 1, k, v, n_kv, 2, d, n_kv - 1, contiguous);
    // a tail block with room for more positions than the sequence has
    be->attention_paged(q, 1, blocks_of(k, v, 32, d, 16), n_kv, 2, d, n_kv - 1, paged);
    EXPECT_EQ(std::memcmp(paged.data(), contiguous.data(), paged.size() * sizeof(float)), 0) << be->name();
    EXPECT_THROW(be->attention_paged(q, 1, blocks_of(k, v, 16, d, 16), n_kv, 2, d, n_kv - 1, paged), InternalError)
        << be->name();
  }
}

}  // namespace
}  // namespace amanuensis::kernels::cpu
