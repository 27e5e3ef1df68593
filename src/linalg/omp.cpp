#include "soupkit/linalg/omp.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/linalg/lapack.hpp"

#include <algorithm>
#include <cmath>

namespace soupkit::linalg {
namespace {

// Float32 vectors, float64 products and sums. Eight independent partial
// sums let the compiler vectorise without reassociating (the order, hence
// the result, is fixed).
double dot(const float* a, const float* b, std::int64_t n) {
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) part[l] += static_cast<double>(a[i + l]) * static_cast<double>(b[i + l]);
  double s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

// One target's fit in progress: chosen atoms, the Cholesky factor L of
// their Gram matrix (lower, k x k, row-major), D_I^T x, coefficients.
struct Fit {
  std::vector<double> l, rhs, coef, work;
  std::int32_t* atoms = nullptr;  // k slots in the result
  double* coefficients = nullptr;
  int used = 0;
  double target_norm = 0;
  bool done = false;
};

// Adds atom `a` (index j) to the fit of target x; false if it is linearly
// dependent on the atoms already chosen (the fit is left unchanged).
bool add_atom(Fit& f, int k, const float* dict, std::int64_t dim, std::int32_t j, const float* x) {
  const float* a = dict + static_cast<std::int64_t>(j) * dim;
  const int s = f.used;
  double* row = f.l.data() + static_cast<std::size_t>(s) * k;
  // Solve L w = D_I^T a (forward substitution) into the new row of L.
  for (int t = 0; t < s; ++t) {
    double v = dot(dict + static_cast<std::int64_t>(f.atoms[t]) * dim, a, dim);
    const double* lt = f.l.data() + static_cast<std::size_t>(t) * k;
    for (int u = 0; u < t; ++u) v -= lt[u] * row[u];
    row[t] = v / lt[t];
  }
  const double aa = dot(a, a, dim);
  double diag = aa;
  for (int t = 0; t < s; ++t) diag -= row[t] * row[t];
  // The new atom's component orthogonal to the chosen ones is lost in
  // rounding: it adds nothing, and would make the factor singular.
  if (!(diag > 1e-10 * aa)) return false;
  row[s] = std::sqrt(diag);
  f.atoms[s] = j;
  f.rhs[static_cast<std::size_t>(s)] = dot(a, x, dim);
  f.used = s + 1;
  // Coefficients: L L^T c = D_I^T x (forward, then back substitution).
  const int n = f.used;
  for (int t = 0; t < n; ++t) {
    const double* lt = f.l.data() + static_cast<std::size_t>(t) * k;
    double v = f.rhs[static_cast<std::size_t>(t)];
    for (int u = 0; u < t; ++u) v -= lt[u] * f.work[static_cast<std::size_t>(u)];
    f.work[static_cast<std::size_t>(t)] = v / lt[t];
  }
  for (int t = n - 1; t >= 0; --t) {
    double v = f.work[static_cast<std::size_t>(t)];
    for (int u = t + 1; u < n; ++u) v -= f.l[static_cast<std::size_t>(u) * k + t] * f.coef[static_cast<std::size_t>(u)];
    f.coef[static_cast<std::size_t>(t)] = v / f.l[static_cast<std::size_t>(t) * k + t];
  }
  return true;
}

// residual = x - D_I c in float64 (stored as float32 for the next sgemm);
// returns its norm.
double update_residual(const Fit& f, const float* dict, std::int64_t dim, const float* x, std::vector<double>& r,
                       float* r32) {
  for (std::int64_t i = 0; i < dim; ++i) r[static_cast<std::size_t>(i)] = x[i];
  for (int t = 0; t < f.used; ++t) {
    const float* a = dict + static_cast<std::int64_t>(f.atoms[t]) * dim;
    const double c = f.coef[static_cast<std::size_t>(t)];
    for (std::int64_t i = 0; i < dim; ++i) r[static_cast<std::size_t>(i)] -= c * a[i];
  }
  double norm = 0;
  for (std::int64_t i = 0; i < dim; ++i) {
    norm += r[static_cast<std::size_t>(i)] * r[static_cast<std::size_t>(i)];
    r32[i] = static_cast<float>(r[static_cast<std::size_t>(i)]);
  }
  return std::sqrt(norm);
}

}  // namespace

OmpResult batched_omp(const float* dictionary, std::int64_t n_atoms, std::int64_t dim, const float* targets,
                      std::int64_t n_targets, const OmpOptions& options) {
  SOUPKIT_ERROR_IF(options.k < 1 || options.batch < 0, "OMP: k ({}) must be positive and batch ({}) not negative",
                   options.k, options.batch);
  const int k = static_cast<int>(std::min<std::int64_t>(options.k, std::min(n_atoms, dim)));
  OmpResult result;
  result.k = options.k;
  const auto kk = static_cast<std::size_t>(options.k);
  result.atoms.assign(static_cast<std::size_t>(n_targets) * kk, -1);
  result.coefficients.assign(static_cast<std::size_t>(n_targets) * kk, 0.0);
  result.relative_residual.assign(static_cast<std::size_t>(n_targets), 0.0);
  result.used.assign(static_cast<std::size_t>(n_targets), 0);
  if (n_targets == 0) return result;

  const int n = to_lapack_int(n_atoms, "OMP dictionary atoms");
  const int d = to_lapack_int(dim, "OMP dimension");
  const std::int64_t automatic = std::clamp<std::int64_t>((128ll << 20) / (4 * std::max<std::int64_t>(n_atoms, 1)), 128, 1024);
  const std::int64_t batch = std::min(options.batch > 0 ? options.batch : automatic, n_targets);
  std::vector<Fit> fits(static_cast<std::size_t>(batch));
  for (auto& f : fits) {
    f.l.assign(static_cast<std::size_t>(k) * k, 0.0);
    f.rhs.assign(static_cast<std::size_t>(k), 0.0);
    f.coef.assign(static_cast<std::size_t>(k), 0.0);
    f.work.assign(static_cast<std::size_t>(k), 0.0);
  }
  std::vector<float> residuals(static_cast<std::size_t>(batch * dim));  // active targets' residuals, packed
  std::vector<float> corr(static_cast<std::size_t>(n_atoms * batch));
  std::vector<double> r64(static_cast<std::size_t>(dim));
  std::vector<std::int64_t> active;

  for (std::int64_t first = 0; first < n_targets; first += batch) {
    const std::int64_t count = std::min(batch, n_targets - first);
    active.clear();
    for (std::int64_t b = 0; b < count; ++b) {
      Fit& f = fits[static_cast<std::size_t>(b)];
      const float* x = targets + (first + b) * dim;
      f.used = 0;
      f.atoms = result.atoms.data() + static_cast<std::size_t>(first + b) * kk;
      f.coefficients = result.coefficients.data() + static_cast<std::size_t>(first + b) * kk;
      f.target_norm = std::sqrt(dot(x, x, dim));
      f.done = f.target_norm == 0 || k == 0;
      if (!f.done) active.push_back(b);
    }
    // Residual of every active target, initially the target itself.
    for (std::size_t a = 0; a < active.size(); ++a)
      std::copy_n(targets + (first + active[a]) * dim, dim, residuals.data() + static_cast<std::int64_t>(a) * dim);

    for (int step = 0; step < k && !active.empty(); ++step) {
      const int na = static_cast<int>(active.size());
      const float one = 1, zero = 0;
      // corr (atoms x active, column-major) = D^T R.
      sgemm_("T", "N", &n, &na, &d, &one, dictionary, &d, residuals.data(), &d, &zero, corr.data(), &n);
      std::size_t kept = 0;
      for (std::size_t a = 0; a < active.size(); ++a) {
        Fit& f = fits[static_cast<std::size_t>(active[a])];
        const float* x = targets + (first + active[a]) * dim;
        float* c = corr.data() + a * static_cast<std::size_t>(n_atoms);
        for (int t = 0; t < f.used; ++t) c[f.atoms[t]] = 0;  // already chosen (residual is orthogonal to them)
        // Largest |correlation| (first on ties); all zero: nothing left to explain.
        const int one_step = 1;
        std::int32_t best = isamax_(&n, c, &one_step) - 1;
        if (best >= 0 && c[best] == 0) best = -1;
        if (best < 0 || !add_atom(f, k, dictionary, dim, best, x)) {
          f.done = true;
          continue;
        }
        float* r32 = residuals.data() + static_cast<std::int64_t>(kept) * dim;
        const double norm = update_residual(f, dictionary, dim, x, r64, r32);
        if (norm <= options.tolerance * f.target_norm) {
          f.done = true;
          continue;
        }
        active[kept++] = active[a];  // compact: residual already moved to slot `kept`
      }
      active.resize(kept);
    }
    // Final coefficients and residual norms.
    for (std::int64_t b = 0; b < count; ++b) {
      Fit& f = fits[static_cast<std::size_t>(b)];
      const float* x = targets + (first + b) * dim;
      for (int t = 0; t < f.used; ++t) f.coefficients[t] = f.coef[static_cast<std::size_t>(t)];
      result.used[static_cast<std::size_t>(first + b)] = f.used;
      if (f.target_norm > 0) {
        const double norm = update_residual(f, dictionary, dim, x, r64, residuals.data());
        result.relative_residual[static_cast<std::size_t>(first + b)] = norm / f.target_norm;
      }
    }
    if (options.on_batch) options.on_batch(first + count, n_targets);
  }
  return result;
}

}  // namespace soupkit::linalg
