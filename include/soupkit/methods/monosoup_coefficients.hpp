#pragma once
// MonoSoup's per-tensor coefficients from a singular spectrum ("Model soups
// need only one ingredient", 2026), exactly as specified in docs/monosoup.md.
#include <cstdint>
#include <span>

namespace soupkit {

enum class MonosoupMode { EffectiveRank, Variance };

struct MonosoupCoefficients {
  std::int64_t k = 0;           // size of the high-energy subspace
  double effective_rank = 0;    // exp(H), H the entropy of the normalised spectrum
  double energy_k = 0;          // P_k: fraction of sum s^2 in the top k
  double rho = 0;               // (s_{k+1} / s_1)^2, 0 if k = r
  double lambda_high = 0;
  double lambda_low = 0;
};

inline constexpr double kMonosoupEps = 1e-12;

// s: all r = min(m, n) singular values, descending.
MonosoupCoefficients monosoup_coefficients(std::span<const double> s, MonosoupMode mode, double variance_threshold);

}  // namespace soupkit
