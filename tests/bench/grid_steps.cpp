// Times each step of MonoSoup's grid route (src/linalg/pgram_svd.cpp) on a
// P x 1 ScaLAPACK grid of all ranks (steps 1-7; steps 0 and 8 are empty):
//   1 Gram: for m > n dgemm of each rank's rows in 256-column panels, one
//     reduce-scatter per panel (pdgram_of_distributed_rows);
//     for m <= n pdsyrk;
//   2 pdsytrd (tridiagonal reduction);
//   3 the tridiagonal read off the reduced matrix (one allreduce of 2r
//     doubles), its eigenvalues by dsterf on every rank, rank 0's broadcast;
//   4 the p = min(k, r-k) eigenvectors of the tridiagonal, a slice per rank
//     by dstemr, then each rank's rows sent to it (pdtridiagonal_eigenvectors);
//   5 pdormtr (back to the Gram's basis);
//   6, 7 the two pdgemm of the projection.
//
//   mpirun -n 2 build/bin/soupkit_bench_grid_steps [--repeats N] [--check] [--json FILE] 2048x5632 ...
//   mpirun -n 2 build/bin/soupkit_bench_grid_steps --pingpong
//
// pdgram_svd/pdspectral_reweight run these calls back to back; here they are
// issued one at a time, with the same arguments and workspace sizes, so each
// can be timed alone (--check compares the result with pdgram_svd +
// pdspectral_reweight's, bit for bit).
//
// Traffic per step: `--stop-after S` returns after step S, and Open MPI's pml
// monitoring (`--mca pml_monitoring_enable 1 --mca
// pml_monitoring_enable_output 3 --mca pml_monitoring_filename F`) writes
// each rank's messages and bytes sent, per peer, at MPI_Finalize; step S's
// traffic is run S minus run S-1 (tests/bench/grid_scaling_model.py does
// this). The monitoring's MPI_T pvars would give it in one run, but Open MPI
// 4.1.4 reports their indices invalid once the pml is selected.
//
// The ping-pong measures MPI itself, so it speaks MPI directly.
#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/linalg/lapack.hpp"
#include "soupkit/linalg/pgram_svd.hpp"
#include "soupkit/linalg/process_grid.hpp"
#include "soupkit/linalg/scalapack.hpp"
#include "soupkit/methods/monosoup_coefficients.hpp"
#include "soupkit/util/error.hpp"

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

using namespace soupkit;
using namespace soupkit::linalg;

namespace {

constexpr int kBlock = 64;  // pgram_svd.cpp's block size, and the engine's layout of X

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// One step's time: the slowest rank's (all start after a barrier).
struct StepFigures {
  std::string name;
  double seconds = 0;
};

StepFigures measure(const char* name, const Communicator& comm, const std::function<void()>& step) {
  comm.barrier();
  const double t0 = now();
  step();
  return {name, comm.max(now() - t0)};
}

// A fine-tuning-like update (rank-32 decaying part plus noise), generated row
// by row from the global row index so every grid size holds the same matrix.
std::vector<double> local_update(const ProcessGrid& grid, const MatrixLayout& xl) {
  constexpr int rank = 32;
  const int n = xl.n;
  std::vector<double> b(static_cast<std::size_t>(n) * rank), a(rank);
  std::mt19937_64 rng_b(7);
  std::normal_distribution<double> g;
  for (auto& v : b) v = g(rng_b);
  std::vector<double> x(std::max<std::size_t>(xl.local_size(), 1));
  for (int lr = 0; lr < xl.local_rows; ++lr) {
    const auto i = global_index(lr, kBlock, grid.my_row(), grid.rows());
    std::mt19937_64 rng(1000003ULL * static_cast<std::uint64_t>(i) + 11);
    for (int k = 0; k < rank; ++k) a[k] = g(rng) * std::exp(-0.15 * k) / rank;
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int k = 0; k < rank; ++k) s += a[k] * b[static_cast<std::size_t>(j) * rank + k];
      x[lr + static_cast<std::size_t>(j) * xl.lld()] = s + 0.02 * g(rng);
    }
  }
  return x;
}

// A ScaLAPACK workspace sized as pgram_svd.cpp's agreed_workspace sizes it.
std::vector<double> workspace_like_product(const Communicator& comm, double query, int info, const char* routine) {
  SOUPKIT_ERROR_IF(comm.any(info != 0), "{} workspace query failed (info {})", routine, info);
  return std::vector<double>(static_cast<std::size_t>(workspace_size(std::max(query, 0.0) * 1.05 + 4.0 * kBlock * kBlock)));
}

struct ShapeRun {
  int k = 0, cols = 0;
  std::vector<StepFigures> steps;
  // The widest eigenvector slice eigenvector_slices gives this spectrum on
  // P ranks (2, 3, 4, 8, 64, 512), for the scaling model's share of step 4
  // and its traffic (even: cols / P).
  std::vector<std::pair<int, int>> widest_slice;
};

// The grid route, one step at a time, exactly as pdgram_svd +
// pdspectral_reweight issue it (workspace queries outside the timed steps).
// With stop_after = s >= 0, returns after step s.
ShapeRun run_steps(const ProcessGrid& grid, const MatrixLayout& xl, std::vector<double>& x, int stop_after) {
  const Communicator& comm = grid.comm();
  const bool left = xl.m <= xl.n;
  const int r = std::min(xl.m, xl.n), m = xl.m, n = xl.n, one_i = 1;
  const double one = 1.0, zero = 0.0;
  const MatrixLayout gl = make_layout(grid, r, r, kBlock, kBlock);
  std::vector<double> gram(std::max<std::size_t>(gl.local_size(), 1), 0.0);
  ShapeRun run;
  const auto stop_here = [&] { return stop_after >= 0 && static_cast<int>(run.steps.size()) > stop_after; };

  run.steps.push_back(measure("no-op", comm, [] {}));
  if (stop_here()) return run;
  run.steps.push_back(measure("Gram", comm, [&] {
    if (left) {
      const int kk = n;
      pdsyrk_("L", "N", &r, &kk, &one, x.data(), &one_i, &one_i, xl.desc.data(), &zero, gram.data(), &one_i, &one_i,
              gl.desc.data());
    } else {
      pdgram_of_distributed_rows(grid, xl, x.data(), gl, gram.data());
    }
  }));
  if (stop_here()) return run;

  std::vector<double> d(r), e(r), tau(r, 0.0);
  int info = 0, lwork = -1;
  double query = 0;
  pdsytrd_("L", &r, gram.data(), &one_i, &one_i, gl.desc.data(), d.data(), e.data(), tau.data(), &query, &lwork,
           &info);
  std::vector<double> work = workspace_like_product(comm, query, info, "pdsytrd");
  lwork = static_cast<int>(work.size());
  run.steps.push_back(measure("pdsytrd", comm, [&] {
    pdsytrd_("L", &r, gram.data(), &one_i, &one_i, gl.desc.data(), d.data(), e.data(), tau.data(), work.data(),
             &lwork, &info);
    agree_on_failure(comm, info != 0 ? fmt::format("pdsytrd failed (info {})", info) : "");
  }));
  if (stop_here()) return run;

  std::vector<double> diagonal, offdiagonal, singular;
  run.steps.push_back(measure("tridiagonal + dsterf + broadcast", comm, [&] {
    std::vector<double> tridiagonal(2 * static_cast<std::size_t>(r), 0.0);
    for (int lr = 0; lr < gl.local_rows; ++lr) {
      const std::int64_t i = global_index(lr, kBlock, grid.my_row(), grid.rows());
      tridiagonal[static_cast<std::size_t>(i)] = gram[lr + static_cast<std::size_t>(i) * gl.lld()];
      if (i > 0) tridiagonal[static_cast<std::size_t>(r + i - 1)] = gram[lr + static_cast<std::size_t>(i - 1) * gl.lld()];
    }
    comm.sum_in_place(tridiagonal);
    diagonal.assign(tridiagonal.begin(), tridiagonal.begin() + r);
    offdiagonal.assign(tridiagonal.begin() + r, tridiagonal.end());
    collectively(comm, [&] { singular = gram_singular_values(diagonal, offdiagonal); });
    comm.broadcast_bytes(std::as_writable_bytes(std::span(singular)));
  }));
  if (stop_here()) return run;

  const auto c = monosoup_coefficients(singular, MonosoupMode::EffectiveRank, 0.8);
  run.k = static_cast<int>(c.k);
  const bool complement = 2 * c.k > r;
  const int cols = static_cast<int>(complement ? r - c.k : c.k);
  run.cols = cols;
  const double alpha = complement ? c.lambda_high : c.lambda_low;
  const double beta = complement ? -(c.lambda_high - c.lambda_low) : c.lambda_high - c.lambda_low;
  SOUPKIT_ERROR_IF(cols == 0 || beta == 0.0, "internal: k = {} leaves no projection to time", c.k);
  const int il = complement ? 1 : r - run.k + 1, iu = complement ? r - run.k : r;
  std::vector<double> ascending(singular.rbegin(), singular.rend());
  for (double& v : ascending) v *= v;
  for (int procs : {2, 3, 4, 8, 64, 512}) {
    const std::vector<int> b = eigenvector_slices(ascending, il, iu, procs);
    int widest = 0;
    for (int p = 0; p < procs; ++p) widest = std::max(widest, b[static_cast<std::size_t>(p) + 1] - b[static_cast<std::size_t>(p)]);
    run.widest_slice.emplace_back(procs, widest);
  }
  const MatrixLayout zl = make_layout(grid, r, cols, kBlock, kBlock);
  std::vector<double> z(std::max<std::size_t>(zl.local_size(), 1), 0.0);
  run.steps.push_back(measure("dstemr eigenvectors (sliced) + exchange", comm, [&] {
    pdtridiagonal_eigenvectors(grid, diagonal, offdiagonal, singular, il, iu, zl, z.data());
  }));
  if (stop_here()) return run;

  lwork = -1;
  pdormtr_("L", "L", "N", &r, &cols, gram.data(), &one_i, &one_i, gl.desc.data(), tau.data(), z.data(), &one_i,
           &one_i, zl.desc.data(), &query, &lwork, &info);
  work = workspace_like_product(comm, query, info, "pdormtr");
  lwork = static_cast<int>(work.size());
  run.steps.push_back(measure("pdormtr", comm, [&] {
    pdormtr_("L", "L", "N", &r, &cols, gram.data(), &one_i, &one_i, gl.desc.data(), tau.data(), z.data(), &one_i,
             &one_i, zl.desc.data(), work.data(), &lwork, &info);
    agree_on_failure(comm, info != 0 ? fmt::format("pdormtr failed (info {})", info) : "");
  }));
  if (stop_here()) return run;

  const int* zd = zl.desc.data();
  if (left) {
    const MatrixLayout tl = make_layout(grid, cols, n, kBlock, xl.nb);
    std::vector<double> t(std::max<std::size_t>(tl.local_size(), 1));
    run.steps.push_back(measure("pdgemm T = Q^T X", comm, [&] {
      pdgemm_("T", "N", &cols, &n, &m, &one, z.data(), &one_i, &one_i, zd, x.data(), &one_i, &one_i, xl.desc.data(),
              &zero, t.data(), &one_i, &one_i, tl.desc.data());
    }));
    if (stop_here()) return run;
    run.steps.push_back(measure("pdgemm X = aX + bQT", comm, [&] {
      pdgemm_("N", "N", &m, &n, &cols, &beta, z.data(), &one_i, &one_i, zd, t.data(), &one_i, &one_i, tl.desc.data(),
              &alpha, x.data(), &one_i, &one_i, xl.desc.data());
    }));
  } else {
    const MatrixLayout tl = make_layout(grid, m, cols, xl.mb, kBlock);
    std::vector<double> t(std::max<std::size_t>(tl.local_size(), 1));
    run.steps.push_back(measure("pdgemm T = X Q", comm, [&] {
      pdgemm_("N", "N", &m, &cols, &n, &one, x.data(), &one_i, &one_i, xl.desc.data(), z.data(), &one_i, &one_i, zd,
              &zero, t.data(), &one_i, &one_i, tl.desc.data());
    }));
    if (stop_here()) return run;
    run.steps.push_back(measure("pdgemm X = aX + bTQ^T", comm, [&] {
      pdgemm_("N", "T", &m, &n, &cols, &beta, t.data(), &one_i, &one_i, tl.desc.data(), z.data(), &one_i, &one_i, zd,
              &alpha, x.data(), &one_i, &one_i, xl.desc.data());
    }));
  }
  // A trailing empty step: its traffic is measure()'s own, to subtract from the others'.
  if (stop_here()) return run;
  run.steps.push_back(measure("no-op", comm, [] {}));
  return run;
}

// The product's own route on the same input, to show the steps above are it.
// Returns the largest difference relative to max |X| and how many entries differ.
std::pair<double, std::uint64_t> product_route_difference(const ProcessGrid& grid, const MatrixLayout& xl,
                                                          std::vector<double> x, const std::vector<double>& stepped) {
  const auto svd = pdgram_svd(grid, xl, x.data());
  const auto c = monosoup_coefficients(svd.singular, MonosoupMode::EffectiveRank, 0.8);
  pdspectral_reweight(grid, xl, x.data(), svd, c.k, c.lambda_high, c.lambda_low);
  double diff = 0, scale = 0;
  std::uint64_t differing = 0;
  for (std::size_t i = 0; i < xl.local_size(); ++i) {
    diff = std::max(diff, std::fabs(x[i] - stepped[i]));
    scale = std::max(scale, std::fabs(x[i]));
    differing += x[i] != stepped[i];
  }
  return {grid.comm().max(diff) / grid.comm().max(scale), grid.comm().sum(differing)};
}

void print_shape(FILE* json, int m, int n, int ranks, int repeat, const ShapeRun& run) {
  for (const auto& s : run.steps) {
    fmt::print("| {}x{} | {} | {} | {} | {} | {:.3f} |\n", m, n, ranks, run.k, s.name, repeat, s.seconds);
    if (json) {
      // The eigenvector step's record also says how its slices fall.
      std::string widest;
      if (s.name.starts_with("dstemr"))
        for (const auto& [procs, w] : run.widest_slice) widest += fmt::format("{}\"{}\": {}", widest.empty() ? "" : ", ", procs, w);
      fmt::print(json,
                 "{{\"m\": {}, \"n\": {}, \"ranks\": {}, \"repeat\": {}, \"k\": {}, \"cols\": {}, \"step\": \"{}\", "
                 "\"seconds\": {:.6f}{}}}\n",
                 m, n, ranks, repeat, run.k, run.cols, s.name, s.seconds,
                 widest.empty() ? "" : ", \"widest_slice\": {" + widest + "}");
    }
  }
  if (repeat == 0 && !run.widest_slice.empty()) {
    fmt::print("slices {}x{}: widest eigenvector slice of {} on P ranks:", m, n, run.cols);
    for (const auto& [procs, widest] : run.widest_slice)
      fmt::print(" P = {}: {} (even {:.1f})", procs, widest, static_cast<double>(run.cols) / procs);
    fmt::print("\n");
  }
  std::fflush(stdout);
  if (json) std::fflush(json);
}

// Half round-trip time between ranks 0 and 1 for message sizes 8 B .. 32 MiB,
// for the Hockney fit alpha + bytes / beta.
void pingpong(const Communicator& world, FILE* json) {
  SOUPKIT_ERROR_IF(world.size() != 2, "--pingpong needs exactly 2 ranks");
  if (world.is_root()) fmt::print("| bytes | half round trip (us, best of reps) | MB/s |\n|---|---|---|\n");
  for (std::size_t bytes = 8; bytes <= (std::size_t{64} << 20); bytes *= 4) {
    std::vector<char> buf(bytes, 1);
    const int reps = bytes <= (1 << 16) ? 2000 : bytes <= (1 << 22) ? 50 : 8;
    const int peer = 1 - world.rank(), count = static_cast<int>(bytes);
    double best = 1e9;
    for (int rep = -2; rep < reps; ++rep) {  // two warm-up round trips
      world.barrier();
      const double t0 = now();
      if (world.rank() == 0) {
        check_mpi(MPI_Send(buf.data(), count, MPI_BYTE, peer, 0, world.get()), "MPI_Send");
        check_mpi(MPI_Recv(buf.data(), count, MPI_BYTE, peer, 0, world.get(), MPI_STATUS_IGNORE), "MPI_Recv");
      } else {
        check_mpi(MPI_Recv(buf.data(), count, MPI_BYTE, peer, 0, world.get(), MPI_STATUS_IGNORE), "MPI_Recv");
        check_mpi(MPI_Send(buf.data(), count, MPI_BYTE, peer, 0, world.get()), "MPI_Send");
      }
      if (rep >= 0) best = std::min(best, (now() - t0) / 2);
    }
    if (world.is_root()) {
      fmt::print("| {} | {:.2f} | {:.0f} |\n", bytes, best * 1e6, bytes / best / 1e6);
      if (json) fmt::print(json, "{{\"pingpong_bytes\": {}, \"seconds\": {:.9f}}}\n", bytes, best);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const MpiSession mpi(argc, argv);
  const Communicator world;
  std::vector<std::pair<int, int>> shapes;
  int repeats = 1, stop_after = -1;
  bool check = false, ping = false;
  FILE* json = nullptr;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    int m = 0, n = 0;
    if (arg == "--repeats" && i + 1 < argc)
      repeats = std::stoi(argv[++i]);
    else if (arg == "--stop-after" && i + 1 < argc)
      stop_after = std::stoi(argv[++i]);
    else if (arg == "--check")
      check = true;
    else if (arg == "--pingpong")
      ping = true;
    else if (arg == "--json" && i + 1 < argc) {
      ++i;
      if (world.is_root()) json = std::fopen(argv[i], "a");
    } else if (std::sscanf(argv[i], "%dx%d", &m, &n) == 2)
      shapes.push_back({m, n});
    else {
      if (world.is_root()) fmt::print(stderr, "unknown argument {}\n", arg);
      return 2;
    }
  }
  if (ping) {
    pingpong(world, json);
    if (json) std::fclose(json);
    return 0;
  }
  const ProcessGrid grid(world, world.size(), 1);
  if (world.is_root()) fmt::print("| shape | ranks | k | step | repeat | seconds (slowest rank) |\n|---|---|---|---|---|---|\n");
  for (const auto& [m, n] : shapes) {
    const auto xl = make_layout(grid, m, n, kBlock, kBlock);
    const auto original = local_update(grid, xl);
    for (int rep = 0; rep < repeats; ++rep) {
      auto x = original;
      const auto run = run_steps(grid, xl, x, stop_after);
      if (world.is_root()) print_shape(json, m, n, world.size(), rep, run);
      if (check && stop_after < 0 && rep == repeats - 1) {
        const auto [e, differing] = product_route_difference(grid, xl, original, x);
        if (world.is_root())
          fmt::print("check {}x{}: {} entries differ from pdgram_svd + pdspectral_reweight; max |difference| / max |X| = "
                     "{:.1e}\n", m, n, differing, e);
        SOUPKIT_ERROR_IF(differing != 0, "the stepped route differs from pdgram_svd + pdspectral_reweight");
      }
    }
  }
  if (json) std::fclose(json);
  return 0;
}
