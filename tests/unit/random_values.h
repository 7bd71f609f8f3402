// Test data: n values drawn from a normal distribution of mean 0 and standard deviation
// `scale`, the same for the same seed (the kernel tests' inputs and weights).
#pragma once

#include <cstddef>
#include <random>
#include <vector>

inline std::vector<float> random_values(std::size_t n, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}
