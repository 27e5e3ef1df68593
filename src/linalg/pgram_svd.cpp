#include "soupkit/linalg/pgram_svd.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/linalg/scalapack.hpp"

#include <algorithm>
#include <cmath>
#include <span>

namespace soupkit::linalg {
namespace {
// Square blocks (pdsyevd requires them) of a size where PBLAS runs near
// full BLAS-3 speed.
constexpr int kBlock = 64;
}  // namespace

DistributedGramSvd pdgram_svd(const ProcessGrid& grid, const MatrixLayout& xl, const double* x) {
  // ScaLAPACK's info and the workspace sizes may differ between ranks:
  // each check below is agreed over the grid, so no rank throws alone.
  DistributedGramSvd out;
  out.m = xl.m;
  out.n = xl.n;
  out.left = xl.m <= xl.n;
  const int r = static_cast<int>(out.r());
  const MatrixLayout gl = make_layout(grid, r, r, kBlock, kBlock);
  std::vector<double> gram(std::max<std::size_t>(gl.local_size(), 1));
  const int one_i = 1;
  const double one = 1.0, zero = 0.0;
  // left: G = X X^T (m x m); right: G = X^T X (n x n).
  const int k = out.left ? xl.n : xl.m;
  pdsyrk_("L", out.left ? "N" : "T", &r, &k, &one, x, &one_i, &one_i, xl.desc.data(), &zero, gram.data(), &one_i,
          &one_i, gl.desc.data());

  out.z_layout = gl;
  out.z.assign(std::max<std::size_t>(gl.local_size(), 1), 0.0);
  std::vector<double> w(static_cast<std::size_t>(r));
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0;
  pdsyevd_("V", "L", &r, gram.data(), &one_i, &one_i, gl.desc.data(), w.data(), out.z.data(), &one_i, &one_i,
           gl.desc.data(), &work_query, &lwork, &iwork_query, &liwork, &info);
  std::vector<double> work;
  std::vector<int> iwork;
  collectively(grid.comm(), [&] {
    SOUPKIT_ERROR_IF(info != 0, "pdsyevd workspace query failed (info {})", info);
    // pdsyevd's query undercounts what its callees check for on some grids
    // (PDORMTR in pdsyevd, PDLASRT in pdstedc: Reference-ScaLAPACK issue 74);
    // take the largest of the query, the documented minimum and those callees'
    // needs, plus slack.
    const int zero = 0, my_row = grid.my_row(), my_col = grid.my_col(), rows = grid.rows(), cols = grid.cols();
    const int nb = kBlock;
    const double np = numroc_(&r, &nb, &my_row, &zero, &rows), nq = numroc_(&r, &nb, &my_col, &zero, &cols);
    const double trilwmin = 3.0 * r + std::max(nb * (np + 1), 3.0 * nb);
    const double documented = std::max(1 + 6.0 * r + 2 * np * nq, trilwmin) + 2.0 * r;
    const double callees = std::max(static_cast<double>(r), np * (nb + nq)) + 2.0 * nb * (np + nq + nb);
    lwork = workspace_size(std::max({work_query, documented, callees}) + 2.0 * nb * (np + nq + nb));
    liwork = std::max(iwork_query, 1);
    work.resize(static_cast<std::size_t>(lwork));
    iwork.resize(static_cast<std::size_t>(liwork));
  });
  pdsyevd_("V", "L", &r, gram.data(), &one_i, &one_i, gl.desc.data(), w.data(), out.z.data(), &one_i, &one_i,
           gl.desc.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  agree_on_failure(grid.comm(),
                   info != 0 ? fmt::format("pdsyevd failed (info {}) on a {} x {} Gram matrix", info, r, r) : "");
  // Only process (0, 0) is guaranteed to hold all eigenvalues (observed:
  // the others' W differs on a P x 1 grid). Every rank must take the same
  // decisions from them, so share process (0, 0)'s.
  grid.comm().broadcast_bytes(std::as_writable_bytes(std::span(w)));
  out.singular.resize(static_cast<std::size_t>(r));
  for (int j = 0; j < r; ++j) out.singular[j] = std::sqrt(std::max(w[r - 1 - j], 0.0));
  return out;
}

void pdspectral_reweight(const ProcessGrid& grid, const MatrixLayout& xl, double* x, const DistributedGramSvd& svd,
                         std::int64_t k, double lambda_high, double lambda_low) {
  const std::int64_t r = svd.r();
  SOUPKIT_ERROR_IF(k < 0 || k > r, "internal: k = {} outside [0, {}]", k, r);
  const double c = lambda_high - lambda_low;
  // Eigenvectors are in ascending order: the top k are the last k columns.
  const bool complement = 2 * k > r;
  const int cols = static_cast<int>(complement ? r - k : k);
  const int jq = complement ? 1 : static_cast<int>(r - k + 1);
  const double alpha = complement ? lambda_high : lambda_low;
  const double beta = complement ? -c : c;
  if (cols == 0 || beta == 0.0) {
    for (std::size_t i = 0; i < xl.local_size(); ++i) x[i] *= alpha;
    return;
  }
  const int one_i = 1, m = xl.m, n = xl.n;
  const double one = 1.0, zero = 0.0;
  const int* zd = svd.z_layout.desc.data();
  if (svd.left) {
    // T = Q^T X (cols x n); X <- alpha X + beta Q T.
    const MatrixLayout tl = make_layout(grid, cols, n, kBlock, xl.nb);
    std::vector<double> t(std::max<std::size_t>(tl.local_size(), 1));
    pdgemm_("T", "N", &cols, &n, &m, &one, svd.z.data(), &one_i, &jq, zd, x, &one_i, &one_i, xl.desc.data(), &zero,
            t.data(), &one_i, &one_i, tl.desc.data());
    pdgemm_("N", "N", &m, &n, &cols, &beta, svd.z.data(), &one_i, &jq, zd, t.data(), &one_i, &one_i, tl.desc.data(),
            &alpha, x, &one_i, &one_i, xl.desc.data());
  } else {
    // T = X Q (m x cols); X <- alpha X + beta T Q^T.
    const MatrixLayout tl = make_layout(grid, m, cols, xl.mb, kBlock);
    std::vector<double> t(std::max<std::size_t>(tl.local_size(), 1));
    pdgemm_("N", "N", &m, &cols, &n, &one, x, &one_i, &one_i, xl.desc.data(), svd.z.data(), &one_i, &jq, zd, &zero,
            t.data(), &one_i, &one_i, tl.desc.data());
    pdgemm_("N", "T", &m, &n, &cols, &beta, t.data(), &one_i, &one_i, tl.desc.data(), svd.z.data(), &one_i, &jq, zd,
            &alpha, x, &one_i, &one_i, xl.desc.data());
  }
}

}  // namespace soupkit::linalg
