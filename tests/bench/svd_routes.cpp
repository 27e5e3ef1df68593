// Measures the routes MonoSoup could take to the singular values and the
// top-k singular subspace of an update matrix, for time and accuracy.
//   mpirun -n 1 build/bin/soupkit_bench_svd_routes 768x768 2048x2048 768x3072
//   mpirun -n 2 ... adds the ScaLAPACK routes on a 2 x 1 grid.
//   ... --stages [--spectrum bf16] 2048x2048 5632x2048: the soupkit route's
//   stages one by one, and the alternatives for its slow ones (two-stage
//   tridiagonal reduction, a subset of the tridiagonal's eigenvectors,
//   subspace iteration instead of the reduction).
// --spectrum bf16: the update of two bf16 checkpoints (decaying rank-64 part
// plus noise, both rounded to bf16), as tests/bench/llama_monosoup.py makes;
// its effective rank is most of r, so the projection takes the r - k rest.
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
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace soupkit;
using namespace soupkit::linalg;

extern "C" {
void dsytrd_2stage_(const char* vect, const char* uplo, const int* n, double* a, const int* lda, double* d, double* e,
                    double* tau, double* hous2, const int* lhous2, double* work, const int* lwork, int* info);
void dsymm_(const char* side, const char* uplo, const int* m, const int* n, const double* alpha, const double* a,
            const int* lda, const double* b, const int* ldb, const double* beta, double* c, const int* ldc);
}

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

float round_to_bf16(float v) {
  std::uint32_t u = 0;
  std::memcpy(&u, &v, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&v, &u, 4);
  return v;
}

// W1 - W0 of two bf16 checkpoints: W0 ~ N(0, 0.02^2), W1 = bf16(W0 + rank-64
// part + N(0, 2e-4^2)), as tests/bench/llama_monosoup.py generates them.
std::vector<double> make_bf16_update(int m, int n) {
  std::mt19937_64 rng(42);
  std::normal_distribution<float> g;
  const int rank = 64;
  std::vector<float> a(static_cast<std::size_t>(m) * rank), b(static_cast<std::size_t>(rank) * n);
  for (auto& v : a) v = g(rng);
  for (int k = 0; k < rank; ++k)
    for (int j = 0; j < n; ++j) b[static_cast<std::size_t>(k) * n + j] = g(rng) * std::exp(-0.08f * k);
  std::vector<double> x(static_cast<std::size_t>(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      float s = 0;
      for (int k = 0; k < rank; ++k) s += a[static_cast<std::size_t>(i) * rank + k] * b[static_cast<std::size_t>(k) * n + j];
      const float w0 = round_to_bf16(g(rng) * 0.02f);
      const float w1 = round_to_bf16(w0 + s * (4e-3f / rank) + g(rng) * 2e-4f);
      x[static_cast<std::size_t>(i) * n + j] = static_cast<double>(w1) - static_cast<double>(w0);
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

// The Gram of the smaller side, column-major r x r (lower triangle).
std::vector<double> gram_of(const std::vector<double>& x, int m, int n) {
  const int r = std::min(m, n);
  std::vector<double> g(static_cast<std::size_t>(r) * r);
  const double one = 1, zero = 0;
  if (m <= n)
    dsyrk_("L", "T", &r, &n, &one, x.data(), &n, &zero, g.data(), &r);
  else
    dsyrk_("L", "N", &r, &m, &one, x.data(), &n, &zero, g.data(), &r);
  return g;
}

// Orthonormalises the r x p column-major y in place (Householder QR).
void orthonormalise(std::vector<double>& y, int r, int p) {
  std::vector<double> tau(p);
  int info = 0, lwork = -1;
  double q = 0;
  dgeqrf_(&r, &p, y.data(), &r, tau.data(), &q, &lwork, &info);
  lwork = workspace_size(q);
  std::vector<double> work(lwork);
  dgeqrf_(&r, &p, y.data(), &r, tau.data(), work.data(), &lwork, &info);
  lwork = -1;
  dorgqr_(&r, &p, &p, y.data(), &r, tau.data(), &q, &lwork, &info);
  lwork = workspace_size(q);
  work.resize(lwork);
  dorgqr_(&r, &p, &p, y.data(), &r, tau.data(), work.data(), &lwork, &info);
}

// The MonoSoup result from a basis q (r x p) of the subspace the projection
// takes (the top k, or the other r - k when `rest`), float64 throughout.
std::vector<double> reweight_with_basis(const std::vector<double>& x, int m, int n, const std::vector<double>& q, int p,
                                        bool rest, double high, double low) {
  const int r = std::min(m, n);
  const bool left = m <= n;
  // Row-major x is column-major A = x^T (n x m). Left: P x = Q Q^T x, i.e. A Q Q^T.
  std::vector<double> t(static_cast<std::size_t>(left ? n : m) * p), proj(x.size());
  const double one = 1, zero = 0;
  if (left) {
    dgemm_("N", "N", &n, &p, &m, &one, x.data(), &n, q.data(), &r, &zero, t.data(), &n);
    dgemm_("N", "T", &n, &m, &p, &one, t.data(), &n, q.data(), &r, &zero, proj.data(), &n);
  } else {
    dgemm_("T", "N", &p, &m, &n, &one, q.data(), &r, x.data(), &n, &zero, t.data(), &p);
    dgemm_("N", "N", &n, &m, &p, &one, q.data(), &r, t.data(), &p, &zero, proj.data(), &n);
  }
  std::vector<double> out(x.size());
  const double c = high - low;
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = rest ? high * x[i] - c * proj[i] : low * x[i] + c * proj[i];
  return out;
}

// The soupkit route's stages one by one, then the alternatives.
void print_stages(const std::vector<double>& x, int m, int n, const Result& ref) {
  const int r = std::min(m, n);
  std::vector<double> g;
  const double t_syrk = seconds_of([&] { g = gram_of(x, m, n); });
  const std::vector<double> g_saved = g;
  std::vector<double> d(r), e(r), tau(r);
  int info = 0, lwork = -1;
  double q = 0;
  dsytrd_("L", &r, g.data(), &r, d.data(), e.data(), tau.data(), &q, &lwork, &info);
  lwork = workspace_size(q);
  std::vector<double> work(lwork);
  const double t_trd = seconds_of([&] { dsytrd_("L", &r, g.data(), &r, d.data(), e.data(), tau.data(), work.data(), &lwork, &info); });
  std::vector<double> w = d, ew = e;
  const double t_sterf = seconds_of([&] { dsterf_(&r, w.data(), ew.data(), &info); });
  std::vector<double> s(r);
  for (int j = 0; j < r; ++j) s[j] = std::sqrt(std::max(w[r - 1 - j], 0.0));
  const auto c = monosoup_coefficients(s, MonosoupMode::EffectiveRank, 0.8);
  const bool rest = 2 * c.k > r;
  const int p = rest ? r - static_cast<int>(c.k) : static_cast<int>(c.k);
  const int il = rest ? 1 : r - static_cast<int>(c.k) + 1, iu = rest ? r - static_cast<int>(c.k) : r;
  // dstemr: all pairs (dqds), or the p needed ones (bisection).
  auto stemr = [&](const char* range, int nzc, std::vector<double>& z) {
    std::vector<double> dd = d, ee = e, ww(r);
    std::vector<int> isuppz(2 * r);
    const double vl = 0, vu = 0;
    int found = 0, tryrac = 1, liwork = -1, iq = 0, lw = -1, inf = 0;
    double qq = 0;
    z.assign(static_cast<std::size_t>(r) * nzc, 0.0);
    dstemr_("V", range, &r, dd.data(), ee.data(), &vl, &vu, &il, &iu, &found, ww.data(), z.data(), &r, &nzc, isuppz.data(), &tryrac, &qq, &lw, &iq, &liwork, &inf);
    lw = workspace_size(qq);
    liwork = iq;
    std::vector<double> wk(lw);
    std::vector<int> iwk(liwork);
    tryrac = 1;
    return seconds_of([&] {
      dstemr_("V", range, &r, dd.data(), ee.data(), &vl, &vu, &il, &iu, &found, ww.data(), z.data(), &r, &nzc, isuppz.data(), &tryrac, wk.data(), &lw, iwk.data(), &liwork, &inf);
    });
  };
  std::vector<double> z_all, z_subset;
  const double t_all = stemr("A", r, z_all);
  const double t_subset = stemr("I", p, z_subset);
  std::vector<double> z_soupkit;
  const double t_soupkit_vectors = seconds_of([&] { z_soupkit = tridiagonal_eigenvectors(d, e, il, iu); });
  // Back-transform and project (soupkit: float32 projection) with the subset.
  GramSvd svd;
  const double t_route = seconds_of([&] { svd = dgram_svd(x.data(), m, n); });
  std::vector<double> out = x;
  const double t_reweight = seconds_of([&] { dspectral_reweight(out.data(), svd, c.k, c.lambda_high, c.lambda_low); });
  const double err_route = result_error({svd.singular, out}, ref);
  // Two-stage reduction (LAPACK 3.11 offers it for eigenvalues only: no Q).
  std::vector<double> g2 = g_saved, d2(r), e2(r), tau2(r);
  int lh = -1;
  double qh = 0;
  lwork = -1;
  dsytrd_2stage_("N", "L", &r, g2.data(), &r, d2.data(), e2.data(), tau2.data(), &qh, &lh, &q, &lwork, &info);
  lh = workspace_size(qh);
  lwork = workspace_size(q);
  std::vector<double> hous(lh), work2(lwork);
  const double t_trd2 = seconds_of([&] { dsytrd_2stage_("N", "L", &r, g2.data(), &r, d2.data(), e2.data(), tau2.data(), hous.data(), &lh, work2.data(), &lwork, &info); });
  dsterf_(&r, d2.data(), e2.data(), &info);
  double eig2_error = 0;
  for (int j = 0; j < r; ++j) eig2_error = std::max(eig2_error, std::fabs(d2[j] - w[j]));
  auto line = [&](const std::string& what, double secs, const std::string& accuracy) {
    fmt::print("| {}x{} | {} | {:.3f} | {} |\n", m, n, what, secs, accuracy);
  };
  fmt::print("| shape | stage or alternative | seconds | accuracy |\n|---|---|---|---|\n");
  line(fmt::format("k = {} of r = {}: the projection takes {} vectors", c.k, r, p), 0, "-");
  line("Gram (dsyrk)", t_syrk, "-");
  line("tridiagonal reduction (dsytrd)", t_trd, "-");
  line("eigenvalues (dsterf)", t_sterf, "-");
  line("all eigenpairs of the tridiagonal (dstemr, dqds), as before", t_all, "-");
  line(fmt::format("the {} needed eigenvectors (dstemr index range, bisection)", p), t_subset, "-");
  line(fmt::format("the {} needed eigenvectors as soupkit chooses (index range up to 0.3 r, else all)", p),
       t_soupkit_vectors, "-");
  line("soupkit's dgram_svd (Gram + dsytrd + dsterf)", t_route, fmt::format("{:.1e} (singular values / s1)", singular_error({svd.singular, {}}, ref)));
  line("soupkit's reweighting (needed vectors, dormtr, float32 projection)", t_reweight, fmt::format("{:.1e} (result)", err_route));
  line("two-stage reduction dsytrd_2stage, eigenvalues only (no Q in LAPACK 3.11)", t_trd2, fmt::format("{:.1e} (eigenvalues / l1)", eig2_error / w[r - 1]));
  // Subspace iteration on the Gram for the p-dimensional subspace the
  // projection takes, instead of the reduction (its eigenvalues still come
  // from somewhere: this times only the vectors). The rest (bottom r - k)
  // is the top of l1 I - G.
  const double shift = rest ? w[r - 1] : 0.0;
  std::vector<double> op = g_saved;
  for (int i = 0; i < r; ++i) {
    for (int j = i; j < r; ++j) op[j + static_cast<std::size_t>(i) * r] = (rest ? -1.0 : 1.0) * op[j + static_cast<std::size_t>(i) * r];
    op[i + static_cast<std::size_t>(i) * r] += shift;
  }
  std::mt19937_64 rng(5);
  std::normal_distribution<double> gauss;
  std::vector<double> basis(static_cast<std::size_t>(r) * p), next(basis.size());
  for (auto& v : basis) v = gauss(rng);
  orthonormalise(basis, r, p);
  int done = 0;
  double elapsed = 0;
  for (int target : {10, 50, 200}) {
    elapsed += seconds_of([&] {
      const double one = 1, zero = 0;
      for (; done < target; ++done) {
        dsymm_("L", "L", &r, &p, &one, op.data(), &r, basis.data(), &r, &zero, next.data(), &r);
        std::swap(basis, next);
        orthonormalise(basis, r, p);
      }
    });
    const auto res = reweight_with_basis(x, m, n, basis, p, rest, c.lambda_high, c.lambda_low);
    line(fmt::format("subspace iteration, {} steps ({} vectors), instead of the reduction and eigenvectors", target, p),
         elapsed, fmt::format("{:.1e} (result)", result_error({{}, res}, ref)));
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const MpiSession mpi(argc, argv);
  const Communicator world;
  const int rank = world.rank(), size = world.size();
  std::vector<std::pair<int, int>> shapes;
  bool stages = false, bf16 = false;
  for (int i = 1; i < argc; ++i) {
    int m = 0, n = 0;
    if (std::sscanf(argv[i], "%dx%d", &m, &n) == 2) shapes.push_back({m, n});
    if (std::string(argv[i]) == "--stages") stages = true;
    if (std::string(argv[i]) == "--spectrum" && i + 1 < argc) bf16 = std::string(argv[++i]) == "bf16";
  }
  if (shapes.empty()) shapes = {{768, 768}, {768, 3072}, {2048, 2048}};
  if (rank == 0) fmt::print("| shape | route | seconds | max singular error / s1 | MonoSoup result rel. error |\n|---|---|---|---|---|\n");
  for (const auto& [m, n] : shapes) {
    const auto x = bf16 ? make_bf16_update(m, n) : make_update(m, n);
    double t = 0;
    if (stages) {
      if (rank == 0) {
        const Result ref = route_dgesdd(x, m, n, &t);
        print_stages(x, m, n, ref);
      }
      continue;
    }
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
