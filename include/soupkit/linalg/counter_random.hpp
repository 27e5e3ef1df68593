#pragma once
// Counter-based random draws for the sparsifiers that drop elements at
// random (DARE, DELLA): the draw of an element is a pure function of
// (seed, tensor name, model index, flat element index), so it does not
// depend on which rank computes the tensor, on the row blocks it is streamed
// in, or on the order of the passes over it. (mergekit draws from torch's
// global generator instead: its masks cannot be reproduced, only their law.)
//
// The function (docs/merge_methods_spec.md, "The random stream"):
//   mix(z)     = SplitMix64's finaliser: z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
//                z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31
//   name_hash  = 64-bit FNV-1a of the tensor name's bytes
//   key        = mix(mix(mix(seed) ^ name_hash) ^ model_index)
//   bits(j)    = mix(key + (j + 1) * 0x9E3779B97F4A7C15)   (the (j+1)-th output of SplitMix64 from `key`)
//   uniform(j) = (bits(j) >> 11) * 2^-53, in [0, 1)
// all arithmetic modulo 2^64. Element j is kept with probability p when
// uniform(j) < p.
#include <cstdint>
#include <string_view>

namespace soupkit::linalg {

// SplitMix64's output function (a bijection of 64-bit words).
std::uint64_t splitmix64_mix(std::uint64_t z);
// FNV-1a, 64 bits.
std::uint64_t fnv1a64(std::string_view bytes);

class CounterStream {
 public:
  CounterStream(std::uint64_t seed, std::string_view tensor_name, std::uint64_t model_index);

  std::uint64_t bits(std::uint64_t index) const;
  // A double in [0, 1) with 53 random bits.
  double uniform(std::uint64_t index) const;
  // The Bernoulli(p) draw of element `index`: uniform(index) < p.
  bool keep(std::uint64_t index, double p) const { return uniform(index) < p; }
  std::uint64_t key() const { return key_; }

 private:
  std::uint64_t key_;
};

}  // namespace soupkit::linalg
