// Measures the routes MonoSoup could take to the singular values and the
// top-k singular subspace of an update matrix, for time and accuracy.
//   mpirun -n 1 build/bin/soupkit_bench_svd_routes 768x768 2048x2048 768x3072
//   mpirun -n 2 ... adds the ScaLAPACK routes on a 2 x 1 grid.
// Accuracy is against float64 dgesdd: max singular value error relative to
// s_1, and the relative Frobenius error of the MonoSoup-reweighted update.
#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/linalg/pgram_svd.hpp"
#include "soupkit/linalg/process_grid.hpp"
#include "soupkit/linalg/scalapack.hpp"
#include "soupkit/methods/monosoup_coefficients.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace soupkit;
using namespace soupkit::linalg;

namespace {

double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Row-major m x n update with a decaying spectrum plus noise, like fine-tuning.
std::vector<double> make_update(int m, int n) {
  std::mt19937_64 rng(42);
  std::normal_distribution<double> g;
  const int rank = 32;
  std::vector<double> a(static_cast<std::size_t>(m) * rank), b(static_cast<std::size_t>(n) * rank), x(static_cast<std::size_t>(m) * n);
  for (auto& v : a) v = g(rng);
  for (auto& v : b) v = g(rng);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int k = 0; k < rank; ++k) s += a[i * rank + k] * b[j * rank + k] * std::exp(-0.15 * k);
      x[static_cast<std::size_t>(i) * n + j] = s / rank + 0.02 * g(rng);
    }
  return x;
}

struct Result {
  std::vector<double> singular;  // descending
  std::vector<double> reweighted;  // row-major
};

// MonoSoup reweighting from an explicit thin SVD (row-major x = U S V^T).
std::vector<double> reweight_from_svd(const std::vector<double>& x, int m, int n, const std::vector<double>& u /*m x r col-major*/,
                                      const std::vector<double>& s, const std::vector<double>& vt /*r x n col-major*/) {
  const auto c = monosoup_coefficients(s, MonosoupMode::EffectiveRank, 0.8);
  std::vector<double> out(x.size());
  const int r = static_cast<int>(s.size());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double high = 0;
      for (int k = 0; k < c.k; ++k) high += u[i + static_cast<std::size_t>(k) * m] * s[k] * vt[k + static_cast<std::size_t>(j) * r];
      const double v = x[static_cast<std::size_t>(i) * n + j];
      out[static_cast<std::size_t>(i) * n + j] = c.lambda_low * v + (c.lambda_high - c.lambda_low) * high;
    }
  return out;
}

// x row-major m x n is column-major n x m; LAPACK SVD of that gives x^T = U' S V'^T,
// so x's U = V', x's V^T = U'^T. We keep it simple: transpose to column-major m x n first.
template <class T>
std::vector<T> column_major(const std::vector<double>& x, int m, int n) {
  std::vector<T> a(x.size());
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) a[i + static_cast<std::size_t>(j) * m] = static_cast<T>(x[static_cast<std::size_t>(i) * n + j]);
  return a;
}

Result route_dgesdd(const std::vector<double>& x, int m, int n, double* t) {
  auto a = column_major<double>(x, m, n);
  const int r = std::min(m, n);
  std::vector<double> s(r), u(static_cast<std::size_t>(m) * r), vt(static_cast<std::size_t>(r) * n);
  std::vector<int> iwork(8 * r);
  int info = 0, lwork = -1;
  double q = 0;
  dgesdd_("S", &m, &n, a.data(), &m, s.data(), u.data(), &m, vt.data(), &r, &q, &lwork, iwork.data(), &info);
  lwork = workspace_size(q);
  std::vector<double> work(lwork);
  *t = seconds_of([&] { dgesdd_("S", &m, &n, a.data(), &m, s.data(), u.data(), &m, vt.data(), &r, work.data(), &lwork, iwork.data(), &info); });
  return {s, reweight_from_svd(x, m, n, u, s, vt)};
}

Result route_sgesdd(const std::vector<double>& x, int m, int n, double* t) {
  auto a = column_major<float>(x, m, n);
  const int r = std::min(m, n);
  std::vector<float> s(r), u(static_cast<std::size_t>(m) * r), vt(static_cast<std::size_t>(r) * n);
  std::vector<int> iwork(8 * r);
  int info = 0, lwork = -1;
  float q = 0;
  sgesdd_("S", &m, &n, a.data(), &m, s.data(), u.data(), &m, vt.data(), &r, &q, &lwork, iwork.data(), &info);
  lwork = workspace_size(q);
  std::vector<float> work(lwork);
  *t = seconds_of([&] { sgesdd_("S", &m, &n, a.data(), &m, s.data(), u.data(), &m, vt.data(), &r, work.data(), &lwork, iwork.data(), &info); });
  std::vector<double> sd(s.begin(), s.end()), ud(u.begin(), u.end()), vd(vt.begin(), vt.end());
  return {sd, reweight_from_svd(x, m, n, ud, sd, vd)};
}

Result route_sgesvd_u_only(const std::vector<double>& x, int m, int n, double* t) {
  auto a = column_major<float>(x, m, n);
  const int r = std::min(m, n);
  std::vector<float> s(r), u(static_cast<std::size_t>(m) * r);
  float vt_dummy = 0;
  int info = 0, lwork = -1, one = 1;
  float q = 0;
  sgesvd_("S", "N", &m, &n, a.data(), &m, s.data(), u.data(), &m, &vt_dummy, &one, &q, &lwork, &info);
  lwork = workspace_size(q);
  std::vector<float> work(lwork);
  *t = seconds_of([&] { sgesvd_("S", "N", &m, &n, a.data(), &m, s.data(), u.data(), &m, &vt_dummy, &one, work.data(), &lwork, &info); });
  // V^T rows from U: v_k^T = u_k^T x / s_k.
  std::vector<double> sd(s.begin(), s.end()), ud(u.begin(), u.end()), vt(static_cast<std::size_t>(r) * n, 0.0);
  for (int k = 0; k < r; ++k)
    if (sd[k] > 0)
      for (int j = 0; j < n; ++j) {
        double acc = 0;
        for (int i = 0; i < m; ++i) acc += ud[i + static_cast<std::size_t>(k) * m] * x[static_cast<std::size_t>(i) * n + j];
        vt[k + static_cast<std::size_t>(j) * r] = acc / sd[k];
      }
  return {sd, reweight_from_svd(x, m, n, ud, sd, vt)};
}

Result route_gram_f32(const std::vector<double>& x, int m, int n, double* t) {
  // float32 Gram + ssyevd, singular values only (the accuracy loss shows there).
  std::vector<float> a(x.begin(), x.end());  // row-major m x n = col-major n x m
  const int r = std::min(m, n);
  std::vector<float> g(static_cast<std::size_t>(r) * r), w(r);
  const float one = 1, zero = 0;
  int info = 0, lwork = -1, liwork = -1, iq = 0;
  float q = 0;
  ssyevd_("V", "L", &r, g.data(), &r, w.data(), &q, &lwork, &iq, &liwork, &info);
  lwork = workspace_size(q);
  liwork = iq;
  std::vector<float> work(lwork);
  std::vector<int> iwork(liwork);
  *t = seconds_of([&] {
    if (m <= n)
      ssyrk_("L", "T", &r, &n, &one, a.data(), &n, &zero, g.data(), &r);
    else
      ssyrk_("L", "N", &r, &m, &one, a.data(), &n, &zero, g.data(), &r);
    ssyevd_("V", "L", &r, g.data(), &r, w.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  });
  std::vector<double> s(r);
  for (int j = 0; j < r; ++j) s[j] = std::sqrt(std::max<double>(w[r - 1 - j], 0.0));
  return {s, {}};
}

Result route_gram_f64(const std::vector<double>& x, int m, int n, double* t) {
  std::vector<double> out = x;
  GramSvd svd;
  *t = seconds_of([&] {
    svd = dgram_svd(out.data(), m, n);
    const auto c = monosoup_coefficients(svd.singular, MonosoupMode::EffectiveRank, 0.8);
    dspectral_reweight(out.data(), svd, c.k, c.lambda_high, c.lambda_low);
  });
  return {svd.singular, out};
}

// ScaLAPACK on a P x 1 grid of all ranks: the Gram route, or psgesvd (U only).
Result route_scalapack_gram(const std::vector<double>& x, int m, int n, double* t, const Communicator& comm) {
  const ProcessGrid grid(comm, comm.size(), 1);
  const auto xl = make_layout(grid, m, n, 64, 64);
  std::vector<double> local(std::max<std::size_t>(xl.local_size(), 1));
  for (int lr = 0; lr < xl.local_rows; ++lr)
    for (int j = 0; j < n; ++j) local[lr + static_cast<std::size_t>(j) * xl.lld()] = x[global_index(lr, 64, grid.my_row(), grid.rows()) * n + j];
  DistributedGramSvd svd;
  comm.barrier();
  *t = seconds_of([&] {
    svd = pdgram_svd(grid, xl, local.data());
    const auto c = monosoup_coefficients(svd.singular, MonosoupMode::EffectiveRank, 0.8);
    pdspectral_reweight(grid, xl, local.data(), svd, c.k, c.lambda_high, c.lambda_low);
    comm.barrier();
  });
  return {svd.singular, {}};
}

Result route_psgesvd(const std::vector<double>& x, int m, int n, double* t, const Communicator& comm) {
  const ProcessGrid grid(comm, comm.size(), 1);
  const auto xl = make_layout(grid, m, n, 64, 64);
  const int r = std::min(m, n);
  const auto ul = make_layout(grid, m, r, 64, 64);
  std::vector<float> local(std::max<std::size_t>(xl.local_size(), 1)), u(std::max<std::size_t>(ul.local_size(), 1)), s(r);
  for (int lr = 0; lr < xl.local_rows; ++lr)
    for (int j = 0; j < n; ++j) local[lr + static_cast<std::size_t>(j) * xl.lld()] = static_cast<float>(x[global_index(lr, 64, grid.my_row(), grid.rows()) * n + j]);
  const int one = 1;
  int info = 0, lwork = -1;
  float q = 0, vt = 0;
  psgesvd_("V", "N", &m, &n, local.data(), &one, &one, xl.desc.data(), s.data(), u.data(), &one, &one, ul.desc.data(), &vt, &one, &one, ul.desc.data(), &q, &lwork, &info);
  lwork = workspace_size(q);
  std::vector<float> work(lwork);
  comm.barrier();
  *t = seconds_of([&] {
    psgesvd_("V", "N", &m, &n, local.data(), &one, &one, xl.desc.data(), s.data(), u.data(), &one, &one, ul.desc.data(), &vt, &one, &one, ul.desc.data(), work.data(), &lwork, &info);
    comm.barrier();
  });
  return {std::vector<double>(s.begin(), s.end()), {}};
}

double singular_error(const Result& r, const Result& ref) {
  double e = 0;
  for (std::size_t i = 0; i < ref.singular.size(); ++i) e = std::max(e, std::fabs(r.singular[i] - ref.singular[i]));
  return e / ref.singular[0];
}

double result_error(const Result& r, const Result& ref) {
  if (r.reweighted.empty()) return NAN;
  double e = 0, nrm = 0;
  for (std::size_t i = 0; i < ref.reweighted.size(); ++i) {
    e += std::pow(r.reweighted[i] - ref.reweighted[i], 2);
    nrm += ref.reweighted[i] * ref.reweighted[i];
  }
  return std::sqrt(e / nrm);
}

}  // namespace

int main(int argc, char** argv) {
  const MpiSession mpi(argc, argv);
  const Communicator world;
  const int rank = world.rank(), size = world.size();
  std::vector<std::pair<int, int>> shapes;
  for (int i = 1; i < argc; ++i) {
    int m = 0, n = 0;
    if (std::sscanf(argv[i], "%dx%d", &m, &n) == 2) shapes.push_back({m, n});
  }
  if (shapes.empty()) shapes = {{768, 768}, {768, 3072}, {2048, 2048}};
  if (rank == 0) fmt::print("| shape | route | seconds | max singular error / s1 | MonoSoup result rel. error |\n|---|---|---|---|---|\n");
  for (const auto& [m, n] : shapes) {
    const auto x = make_update(m, n);
    double t = 0;
    auto report = [&](const char* name, const Result& r, const Result& ref, double secs) {
      if (rank == 0)
        fmt::print("| {}x{} | {} | {:.3f} | {:.1e} | {} |\n", m, n, name, secs, singular_error(r, ref),
                   r.reweighted.empty() ? std::string("-") : fmt::format("{:.1e}", result_error(r, ref)));
      std::fflush(stdout);
    };
    Result ref;
    if (rank == 0) {
      ref = route_dgesdd(x, m, n, &t);
      report("dgesdd (float64 reference)", ref, ref, t);
      auto r1 = route_sgesdd(x, m, n, &t);
      report("sgesdd", r1, ref, t);
      auto r2 = route_sgesvd_u_only(x, m, n, &t);
      report("sgesvd, U only", r2, ref, t);
      auto r3 = route_gram_f32(x, m, n, &t);
      report("float32 Gram + ssyevd (no projection)", r3, ref, t);
      auto r4 = route_gram_f64(x, m, n, &t);
      report("float64 Gram + dsytrd + dstemr + float32 projection (soupkit)", r4, ref, t);
    }
    {
      auto r5 = route_psgesvd(x, m, n, &t, world);
      if (rank == 0) report(fmt::format("ScaLAPACK psgesvd U only, {}x1 grid", size).c_str(), r5, ref, t);
      auto r6 = route_scalapack_gram(x, m, n, &t, world);
      if (rank == 0) report(fmt::format("ScaLAPACK pdsyrk + pdsyevd + pdgemm, {}x1 grid (soupkit)", size).c_str(), r6, ref, t);
    }
  }
  return 0;
}
