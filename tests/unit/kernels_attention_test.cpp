// The few-query attention head used by decoder steps: equal to the reference attention
// within float rounding, and each query's output independent (to the bit) of the other
// queries computed with it, causal or not.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

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

}  // namespace
}  // namespace amanuensis::kernels::cpu
