#pragma once
// Orthogonal Matching Pursuit over one dictionary for many targets at once.
// Each step takes the correlations of every active target's residual with
// every atom in one sgemm (the BLAS-3 part, float32), picks per target the
// atom with the largest |<residual, atom>|, then refits the target by least
// squares on its chosen atoms through an incrementally extended Cholesky
// factor of their Gram matrix, in float64. A target stops early when its
// residual vanishes (relative norm <= tolerance) or the next atom is
// linearly dependent on those already chosen.
#include <cstdint>
#include <functional>
#include <vector>

namespace soupkit::linalg {

struct OmpOptions {
  int k = 64;                        // atoms per target, at most
  // Targets per sgemm; 0 = automatic: sgemm repacks the whole dictionary
  // on every call, so larger batches amortise that (measured best near
  // 512-1024 columns), while the correlation block (atoms x batch floats)
  // stays at most ~128 MB.
  std::int64_t batch = 0;
  double tolerance = 1e-6;           // stop once ||residual|| <= tolerance ||target||
  // Told after each batch how many targets are fitted (progress); may be empty.
  std::function<void(std::int64_t done, std::int64_t total)> on_batch;
};

struct OmpResult {
  int k = 0;
  // targets x k, row-major: chosen atom indices (-1 past a target's last
  // atom) and their least-squares coefficients (0 there).
  std::vector<std::int32_t> atoms;
  std::vector<double> coefficients;
  std::vector<double> relative_residual;  // ||x - D_I c|| / ||x|| per target (0 for a zero target)
  std::vector<int> used;                  // atoms chosen per target
};

// dictionary: n_atoms rows of `dim` floats (row-major, one atom per row);
// targets: n_targets rows of `dim` floats. Results for a target do not
// depend on which other targets share its batch.
OmpResult batched_omp(const float* dictionary, std::int64_t n_atoms, std::int64_t dim, const float* targets,
                      std::int64_t n_targets, const OmpOptions& options);

}  // namespace soupkit::linalg
