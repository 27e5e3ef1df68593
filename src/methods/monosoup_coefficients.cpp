#include "soupkit/methods/monosoup_coefficients.hpp"

#include <algorithm>
#include <cmath>

namespace soupkit {

MonosoupCoefficients monosoup_coefficients(std::span<const double> s, MonosoupMode mode, double variance_threshold) {
  constexpr double eps = kMonosoupEps;
  const auto r = static_cast<std::int64_t>(s.size());
  double sum_s = 0, sum_s2 = 0;
  for (double v : s) {
    sum_s += v;
    sum_s2 += v * v;
  }
  MonosoupCoefficients c;
  double entropy = 0;
  for (double v : s) {
    const double p = v / (sum_s + eps);
    entropy -= p * std::log(p + eps);
  }
  c.effective_rank = std::exp(entropy);
  if (mode == MonosoupMode::EffectiveRank) {
    c.k = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::ceil(c.effective_rank)), 1, r);
  } else {
    c.k = r;  // if rounding keeps the fraction just under R, all of the spectrum
    double cumulative = 0;
    for (std::int64_t i = 0; i < r; ++i) {
      cumulative += s[i] * s[i];
      if (cumulative / (sum_s2 + eps) >= variance_threshold) {
        c.k = i + 1;
        break;
      }
    }
  }
  double top = 0;
  for (std::int64_t i = 0; i < c.k; ++i) top += s[i] * s[i];
  c.energy_k = top / (sum_s2 + eps);
  c.rho = c.k < r ? std::pow(s[c.k] / (s[0] + eps), 2) : 0.0;
  const double cos_a = std::sqrt(std::clamp(1.0 - c.energy_k, 0.0, 1.0));
  const double mix = c.rho + (1.0 - c.rho) * cos_a;
  c.lambda_low = std::clamp(mix, 0.0, 1.0);
  c.lambda_high = std::clamp(1.0 - mix, 0.0, 1.0);
  return c;
}

}  // namespace soupkit
