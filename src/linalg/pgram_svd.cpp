#include "soupkit/linalg/pgram_svd.hpp"

#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/linalg/scalapack.hpp"
#include "soupkit/util/error.hpp"

#include <algorithm>
#include <cmath>
#include <span>

namespace soupkit::linalg {
namespace {
// Square blocks of a size where PBLAS runs near full BLAS-3 speed.
constexpr int kBlock = 64;
// Columns of the Gram matrix summed over the ranks at a time: bounds the
// partial sums each rank holds to r x kPanel, whatever r.
constexpr int kPanel = 256;

// Which grid row owns global row `i` of a matrix in kBlock row blocks.
int owner_of_row(std::int64_t i, int procs) { return static_cast<int>((i / kBlock) % procs); }

}  // namespace

std::vector<int> eigenvector_slices(const std::vector<double>& ascending, int il, int iu, int parts) {
  const int r = static_cast<int>(ascending.size());
  SOUPKIT_ERROR_IF(parts < 1 || il < 1 || iu > r || il > iu + 1, "internal: {} slices of eigenpairs {}..{} of {}", parts,
                   il, iu, r);
  double largest = 0;
  for (double v : ascending) largest = std::max(largest, std::abs(v));
  // Where a boundary may fall: b splits eigenvalue b - 1 from b (1-based).
  std::vector<int> allowed = {il};
  for (int b = il + 1; b <= iu; ++b) {
    const double below = ascending[static_cast<std::size_t>(b - 2)], above = ascending[static_cast<std::size_t>(b - 1)];
    const double gap = above - below;
    if (gap >= kSliceRelativeGap * std::max(std::abs(below), std::abs(above)) && gap >= kSliceAbsoluteGap * largest &&
        gap > 0)
      allowed.push_back(b);
  }
  allowed.push_back(iu + 1);
  std::vector<int> bounds(static_cast<std::size_t>(parts) + 1);
  bounds.front() = il;
  bounds.back() = iu + 1;
  const double count = static_cast<double>(iu + 1 - il);
  for (int p = 1; p < parts; ++p) {
    const double ideal = il + count * p / parts;
    const int previous = bounds[static_cast<std::size_t>(p) - 1];
    // The nearest allowed boundary at or after the previous one.
    auto it = std::lower_bound(allowed.begin(), allowed.end(), previous);
    int best = *it;
    for (; it != allowed.end(); ++it) {
      if (std::abs(*it - ideal) < std::abs(best - ideal)) best = *it;
      if (*it > ideal) break;
    }
    bounds[static_cast<std::size_t>(p)] = best;
  }
  return bounds;
}

// G = X^T X (n x n lower triangle, gl's layout) for X = m x n with m > n,
// whose rows are spread over the grid's rows: each rank's rows give a
// partial Gram by dsyrk-speed dgemm, and a reduce-scatter sums the ranks'
// partials straight into the row blocks each rank owns, a panel of columns
// at a time. (PBLAS pdsyrk on this shape ran 1.6x slower than dsyrk on one
// rank and no faster on two: docs/monosoup.md, "The grid path".)
void pdgram_of_distributed_rows(const ProcessGrid& grid, const MatrixLayout& xl, const double* x,
                                const MatrixLayout& gl, double* g) {
  const int r = xl.n, rows = xl.local_rows, procs = grid.rows();
  const int ld = xl.lld();
  std::vector<double> partial, packed, mine;
  std::vector<int> counts(static_cast<std::size_t>(procs));
  for (int j0 = 0; j0 < r; j0 += kPanel) {
    const int width = std::min(kPanel, r - j0), height = r - j0;  // rows j0..r of columns j0..j0+width
    partial.assign(static_cast<std::size_t>(height) * width, 0.0);
    const double one = 1.0, zero = 0.0;
    if (rows > 0)
      dgemm_("T", "N", &height, &width, &rows, &one, x + static_cast<std::size_t>(j0) * ld, &ld,
             x + static_cast<std::size_t>(j0) * ld, &ld, &zero, partial.data(), &height);
    // Pack for each owner its rows (ascending) of the panel, column by column.
    std::fill(counts.begin(), counts.end(), 0);
    for (int i = j0; i < r; ++i) counts[static_cast<std::size_t>(owner_of_row(i, procs))] += width;
    packed.resize(partial.size());
    std::vector<std::size_t> at(static_cast<std::size_t>(procs), 0);
    for (int d = 1; d < procs; ++d) at[d] = at[d - 1] + static_cast<std::size_t>(counts[d - 1]);
    for (int c = 0; c < width; ++c)
      for (int i = j0; i < r; ++i)
        packed[at[static_cast<std::size_t>(owner_of_row(i, procs))]++] =
            partial[static_cast<std::size_t>(i - j0) + static_cast<std::size_t>(c) * height];
    mine.resize(static_cast<std::size_t>(counts[static_cast<std::size_t>(grid.my_row())]));
    grid.comm().reduce_scatter_sum(packed, mine, counts);
    // Unpack into this rank's local rows of G (all columns are local on P x 1).
    const int mine_rows = width > 0 ? static_cast<int>(mine.size()) / width : 0;
    for (int lr = 0, k = 0; lr < gl.local_rows; ++lr) {
      const std::int64_t i = global_index(lr, kBlock, grid.my_row(), procs);
      if (i < j0) continue;
      for (int c = 0; c < width; ++c)
        g[lr + static_cast<std::size_t>(j0 + c) * gl.lld()] = mine[static_cast<std::size_t>(k) + static_cast<std::size_t>(c) * mine_rows];
      ++k;
    }
  }
}

namespace {
// Asks a ScaLAPACK routine for its workspace (a query that may differ
// between ranks) and sizes it with slack; agreed over the grid.
std::vector<double> agreed_workspace(const ProcessGrid& grid, double query, int info, const char* routine) {
  std::vector<double> work;
  collectively(grid.comm(), [&] {
    SOUPKIT_ERROR_IF(info != 0, "{} workspace query failed (info {})", routine, info);
    work.resize(static_cast<std::size_t>(workspace_size(query * 1.05 + 4.0 * kBlock * kBlock)));
  });
  return work;
}
}  // namespace

DistributedGramSvd pdgram_svd(const ProcessGrid& grid, const MatrixLayout& xl, const double* x) {
  // ScaLAPACK's info and the workspace sizes may differ between ranks:
  // each check below is agreed over the grid, so no rank throws alone.
  SOUPKIT_ERROR_IF(grid.cols() != 1, "internal: the Gram route needs a P x 1 grid, not {} x {}", grid.rows(),
                   grid.cols());
  DistributedGramSvd out;
  out.m = xl.m;
  out.n = xl.n;
  out.left = xl.m <= xl.n;
  const int r = static_cast<int>(out.r());
  out.gram_layout = make_layout(grid, r, r, kBlock, kBlock);
  const MatrixLayout& gl = out.gram_layout;
  auto& gram = out.reflectors;
  gram.assign(std::max<std::size_t>(gl.local_size(), 1), 0.0);
  const int one_i = 1;
  if (out.left) {
    // G = X X^T (m x m): pairs of rows that live on different ranks.
    const double one = 1.0, zero = 0.0;
    const int k = xl.n;
    pdsyrk_("L", "N", &r, &k, &one, x, &one_i, &one_i, xl.desc.data(), &zero, gram.data(), &one_i, &one_i,
            gl.desc.data());
  } else {
    pdgram_of_distributed_rows(grid, xl, x, gl, gram.data());  // G = X^T X (n x n)
  }

  // Tridiagonal reduction. On a P x 1 grid every rank holds all columns, so
  // d, e and tau are sized r; only the owners of T's entries hold them, so
  // T is read off the reduced matrix's diagonal and subdiagonal instead.
  std::vector<double> d(static_cast<std::size_t>(r)), e(static_cast<std::size_t>(r));
  out.tau.assign(static_cast<std::size_t>(r), 0.0);
  int info = 0, lwork = -1;
  double query = 0;
  pdsytrd_("L", &r, gram.data(), &one_i, &one_i, gl.desc.data(), d.data(), e.data(), out.tau.data(), &query, &lwork,
           &info);
  std::vector<double> work = agreed_workspace(grid, query, info, "pdsytrd");
  lwork = static_cast<int>(work.size());
  pdsytrd_("L", &r, gram.data(), &one_i, &one_i, gl.desc.data(), d.data(), e.data(), out.tau.data(), work.data(),
           &lwork, &info);
  agree_on_failure(grid.comm(), info != 0 ? fmt::format("pdsytrd failed (info {}) on a {} x {} Gram matrix", info, r, r)
                                          : "");
  // Each entry comes from its one owner and zeros from the others: the sum
  // is exact, so every rank holds the same bits.
  std::vector<double> tridiagonal(2 * static_cast<std::size_t>(r), 0.0);
  for (int lr = 0; lr < gl.local_rows; ++lr) {
    const std::int64_t i = global_index(lr, kBlock, grid.my_row(), grid.rows());
    tridiagonal[static_cast<std::size_t>(i)] = gram[lr + static_cast<std::size_t>(i) * gl.lld()];
    if (i > 0) tridiagonal[static_cast<std::size_t>(r + i - 1)] = gram[lr + static_cast<std::size_t>(i - 1) * gl.lld()];
  }
  grid.comm().sum_in_place(tridiagonal);
  out.diagonal.assign(tridiagonal.begin(), tridiagonal.begin() + r);
  out.offdiagonal.assign(tridiagonal.begin() + r, tridiagonal.end());
  std::vector<double> singular;
  collectively(grid.comm(), [&] { singular = gram_singular_values(out.diagonal, out.offdiagonal); });
  // Every rank must take the same decisions (k) from the spectrum: share
  // rank 0's, so that not even a rank on another CPU model can differ.
  grid.comm().broadcast_bytes(std::as_writable_bytes(std::span(singular)));
  out.singular = std::move(singular);
  return out;
}

// Rank p computes eigenvectors slices[p] .. slices[p + 1] - 1 (r x width,
// all rows) and sends rank q the rows q owns, q's turn t = (q - p) mod P;
// each rank receives, for every p, those columns of its own rows, which are
// contiguous in z (column-major, leading dimension its row count). Memory:
// the slice, one destination's rows of it, and z.
void pdtridiagonal_eigenvectors(const ProcessGrid& grid, const std::vector<double>& diagonal,
                                const std::vector<double>& offdiagonal, const std::vector<double>& singular, int il,
                                int iu, const MatrixLayout& zl, double* z) {
  const Communicator& comm = grid.comm();
  const int procs = grid.rows(), me = grid.my_row();
  const int r = static_cast<int>(diagonal.size());
  // The rows of z go where they are sent only on the layout assumed here:
  // checked before any rank sends, and agreed, so no rank is left waiting.
  std::vector<std::vector<int>> rows_of(static_cast<std::size_t>(procs));  // each rank's global rows, ascending
  for (int i = 0; i < r; ++i) rows_of[static_cast<std::size_t>(owner_of_row(i, procs))].push_back(i);
  std::string layout_error;
  if (grid.cols() != 1 || comm.rank() != me)  // a P x 1 grid numbers its rows as the communicator its ranks
    layout_error = fmt::format("internal: grid row {} of a {} x {} grid is rank {}", me, procs, grid.cols(), comm.rank());
  else if (zl.m != r || zl.n != iu - il + 1 || zl.mb != kBlock || il < 1 || iu > r || il > iu ||
           static_cast<std::size_t>(zl.local_rows) != rows_of[static_cast<std::size_t>(me)].size())
    layout_error = fmt::format("internal: eigenvectors {}..{} of {} into a {} x {} layout of {}-row blocks ({} local rows)",
                               il, iu, r, zl.m, zl.n, zl.mb, zl.local_rows);
  agree_on_failure(comm, layout_error);
  std::vector<double> ascending(singular.rbegin(), singular.rend());
  for (double& s : ascending) s *= s;
  const std::vector<int> slices = eigenvector_slices(ascending, il, iu, procs);
  const int lo = slices[static_cast<std::size_t>(me)], hi = slices[static_cast<std::size_t>(me) + 1];
  std::vector<double> mine;
  collectively(comm, [&] {
    if (hi > lo) mine = tridiagonal_eigenvectors_in_range(diagonal, offdiagonal, lo, hi - 1);
  });
  const std::size_t width = static_cast<std::size_t>(hi - lo), lld = static_cast<std::size_t>(zl.lld());
  std::vector<double> packed;
  constexpr int kTag = 7;
  for (int turn = 0; turn < procs; ++turn) {
    const int to = (me + turn) % procs, from = (me - turn + procs) % procs;
    const auto& rows = rows_of[static_cast<std::size_t>(to)];
    packed.resize(rows.size() * width);
    for (std::size_t j = 0; j < width; ++j)
      for (std::size_t i = 0; i < rows.size(); ++i)
        packed[i + j * rows.size()] = mine[static_cast<std::size_t>(rows[i]) + j * static_cast<std::size_t>(r)];
    const std::size_t first = static_cast<std::size_t>(slices[static_cast<std::size_t>(from)] - il);
    const std::size_t count = static_cast<std::size_t>(slices[static_cast<std::size_t>(from) + 1] -
                                                       slices[static_cast<std::size_t>(from)]);
    const std::size_t values = count * static_cast<std::size_t>(zl.local_rows);
    const std::span<double> into = values ? std::span<double>(z + first * lld, values) : std::span<double>();
    if (turn == 0) {
      std::copy(packed.begin(), packed.end(), into.begin());  // this rank's own rows of its slice
      continue;
    }
    comm.exchange_bytes(std::as_bytes(std::span(packed)), to, std::as_writable_bytes(into), from, kTag);
  }
}

void pdspectral_reweight(const ProcessGrid& grid, const MatrixLayout& xl, double* x, const DistributedGramSvd& svd,
                         std::int64_t k, double lambda_high, double lambda_low) {
  const std::int64_t r64 = svd.r();
  SOUPKIT_ERROR_IF(k < 0 || k > r64, "internal: k = {} outside [0, {}]", k, r64);
  const double c = lambda_high - lambda_low;
  // P_k x = x - P_rest x: project onto the smaller of the two subspaces.
  // Eigenvalues ascend: the top k are numbers r-k+1..r, the rest 1..r-k.
  const bool complement = 2 * k > r64;
  const int cols = static_cast<int>(complement ? r64 - k : k);
  const double alpha = complement ? lambda_high : lambda_low;
  const double beta = complement ? -c : c;
  if (cols == 0 || beta == 0.0) {
    for (std::size_t i = 0; i < xl.local_size(); ++i) x[i] *= alpha;
    return;
  }
  const int r = static_cast<int>(r64);
  const int il = complement ? 1 : r - static_cast<int>(k) + 1, iu = complement ? r - static_cast<int>(k) : r;
  // The tridiagonal's eigenvectors il..iu, a slice per rank (each from the
  // same tridiagonal bits, so the same slices every run), then each rank's
  // rows of every slice to it: z is r x cols in the Gram's row blocks.
  const MatrixLayout zl = make_layout(grid, r, cols, kBlock, kBlock);
  std::vector<double> z(std::max<std::size_t>(zl.local_size(), 1), 0.0);
  pdtridiagonal_eigenvectors(grid, svd.diagonal, svd.offdiagonal, svd.singular, il, iu, zl, z.data());
  // Back to the Gram matrix's basis: z <- Q z, Q from pdsytrd's reflectors.
  const int one_i = 1;
  int info = 0, lwork = -1;
  double query = 0;
  const MatrixLayout& gl = svd.gram_layout;
  pdormtr_("L", "L", "N", &r, &cols, svd.reflectors.data(), &one_i, &one_i, gl.desc.data(), svd.tau.data(), z.data(),
           &one_i, &one_i, zl.desc.data(), &query, &lwork, &info);
  std::vector<double> work = agreed_workspace(grid, query, info, "pdormtr");
  lwork = static_cast<int>(work.size());
  pdormtr_("L", "L", "N", &r, &cols, svd.reflectors.data(), &one_i, &one_i, gl.desc.data(), svd.tau.data(), z.data(),
           &one_i, &one_i, zl.desc.data(), work.data(), &lwork, &info);
  agree_on_failure(grid.comm(), info != 0 ? fmt::format("pdormtr failed (info {})", info) : "");

  const int m = xl.m, n = xl.n;
  const double one = 1.0, zero = 0.0;
  const int* zd = zl.desc.data();
  if (svd.left) {
    // T = Q^T X (cols x n); X <- alpha X + beta Q T.
    const MatrixLayout tl = make_layout(grid, cols, n, kBlock, xl.nb);
    std::vector<double> t(std::max<std::size_t>(tl.local_size(), 1));
    pdgemm_("T", "N", &cols, &n, &m, &one, z.data(), &one_i, &one_i, zd, x, &one_i, &one_i, xl.desc.data(), &zero,
            t.data(), &one_i, &one_i, tl.desc.data());
    pdgemm_("N", "N", &m, &n, &cols, &beta, z.data(), &one_i, &one_i, zd, t.data(), &one_i, &one_i, tl.desc.data(),
            &alpha, x, &one_i, &one_i, xl.desc.data());
  } else {
    // T = X Q (m x cols); X <- alpha X + beta T Q^T.
    const MatrixLayout tl = make_layout(grid, m, cols, xl.mb, kBlock);
    std::vector<double> t(std::max<std::size_t>(tl.local_size(), 1));
    pdgemm_("N", "N", &m, &cols, &n, &one, x, &one_i, &one_i, xl.desc.data(), z.data(), &one_i, &one_i, zd, &zero,
            t.data(), &one_i, &one_i, tl.desc.data());
    pdgemm_("N", "T", &m, &n, &cols, &beta, t.data(), &one_i, &one_i, tl.desc.data(), z.data(), &one_i, &one_i, zd,
            &alpha, x, &one_i, &one_i, xl.desc.data());
  }
}

}  // namespace soupkit::linalg
