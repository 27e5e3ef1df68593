#include "soupkit/methods/monosoup.hpp"

#include "soupkit/io/side_file.hpp"
#include "soupkit/io/cast.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/linalg/low_rank_svd.hpp"
#include "soupkit/linalg/pgram_svd.hpp"
#include "soupkit/engine/tensor_progress.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

namespace soupkit {
namespace {

constexpr double kEps = kMonosoupEps;

std::string mode_name(MonosoupMode mode) { return mode == MonosoupMode::EffectiveRank ? "effective-rank" : "variance"; }

// Reads a tensor of a float dtype into doubles, reusing the caller's
// buffers: fresh multi-megabyte allocations for every tensor cost more in
// page faults than the reading itself.
void read_as_f64(const CheckpointReader& reader, const TensorInfo& t, std::vector<std::byte>& raw,
                 std::vector<double>& values) {
  raw.resize(t.nbytes());
  reader.read(t, raw);
  values.resize(t.numel());
  load_as_f64(t.dtype, raw.data(), values.size(), values.data());
}

// Index of the first NaN/Inf, or -1.
std::int64_t first_non_finite(const std::vector<double>& v) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) return static_cast<std::int64_t>(i);
  return -1;
}

double sum_of_squares(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return s;
}

// Step 1's threshold: why a tensor with these norms is kept (empty: process it).
std::string reason_to_keep(double delta_norm, double base_norm, double min_rel_update) {
  if (base_norm < kEps) return delta_norm < kEps ? "zero update" : "";
  return delta_norm / (base_norm + kEps) < min_rel_update ? "update below --min-rel-update" : "";
}

double energy(const std::vector<double>& singular) { return sum_of_squares(singular); }

// sum of (a_i - b_i)^2 over the first `count` elements.
double squared_distance(const double* a, const double* b, std::size_t count) {
  double s = 0;
  for (std::size_t i = 0; i < count; ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return s;
}

// The values as the output holds them (rounded to its dtype), in place, a
// block at a time (no second copy of the tensor).
void round_through(DType dtype, double* values, std::size_t count) {
  constexpr std::size_t kBlock = 4096;
  std::vector<std::byte> bytes(std::min(count, kBlock) * dtype_size(dtype));
  for (std::size_t first = 0; first < count; first += kBlock) {
    const std::size_t n = std::min(kBlock, count - first);
    store_from_f64(dtype, values + first, n, bytes.data());
    load_as_f64(dtype, bytes.data(), n, values + first);
  }
}

// How far the result W, as written, is from W0 and W1 (Frobenius norms, for
// the report and the summary's relative distances).
void record_distances(nlohmann::json& record, double to_base_sq, double to_finetuned_sq, double base_sq,
                      double finetuned_sq) {
  record["base_norm"] = std::sqrt(base_sq);
  record["finetuned_norm"] = std::sqrt(finetuned_sq);
  record["distance_to_base"] = std::sqrt(to_base_sq);
  record["distance_to_finetuned"] = std::sqrt(to_finetuned_sq);
}

void describe(nlohmann::json& record, const MonosoupCoefficients& c, std::int64_t r) {
  record["action"] = "monosoup";
  record["k"] = c.k;
  record["rank"] = r;
  record["effective_rank"] = c.effective_rank;
  record["P_k"] = c.energy_k;
  record["rho"] = c.rho;
  record["lambda_high"] = c.lambda_high;
  record["lambda_low"] = c.lambda_low;
}

// Row blocks of this size are the unit of distribution on a grid (ScaLAPACK
// block-cyclic rows) and of reading and writing there.
constexpr int kGridBlock = 64;

// Progress through one MonoSoup tensor (report_tensor_progress): its steps
// weighted by a rough estimate of their cost, in flops: reading and writing
// an element ~50 (memory and I/O bound, against BLAS-3's several GFlop/s),
// the Gram product r^2 max(m, n), its eigensolver ~10 r^3, the reweighting
// ~2 r m n (two products with at most r/2 vectors). Only the shares matter.
class TensorSteps {
 public:
  TensorSteps(std::int64_t m, std::int64_t n) {
    const double md = static_cast<double>(m), nd = static_cast<double>(n), r = std::min(md, nd);
    io_ = 50 * md * nd;
    svd_ = r * r * std::max(md, nd) + 10 * r * r * r;
    reweight_ = 2 * r * md * nd;
  }
  void read(double fraction) { report(fraction * io_); }
  void svd_done() { report(io_ + svd_); }
  void reweight_done() { report(io_ + svd_ + reweight_); }
  void write(double fraction) { report(io_ + svd_ + reweight_ + fraction * io_); }

 private:
  void report(double done) const {
    constexpr double kUnits = 1e6;
    report_tensor_progress(static_cast<std::uint64_t>(kUnits * done / (2 * io_ + svd_ + reweight_)),
                           static_cast<std::uint64_t>(kUnits));
  }
  double io_, svd_, reweight_;
};
// Below this size a grid's communication outweighs its gain (measured in
// docs/monosoup.md), whatever the balance of work.
constexpr double kAutoGridMinDim = 1024;

// Output in W1's dtype (or --out-dtype): W1's bytes unchanged when the
// dtype is the same, else cast.
void write_kept(const CheckpointReader& reader, const TensorInfo& in, const TensorInfo& out_info, std::span<std::byte> out) {
  if (in.dtype == out_info.dtype) {
    reader.read(in, out);
    return;
  }
  const auto raw = reader.read(in);
  cast_elements(in.dtype, out_info.dtype, raw.data(), in.numel(), out.data());
}

}  // namespace

MethodPlan MonosoupMethod::plan(const PlanContext& context) {
  if (options_.report) check_report_replaceable(*options_.report);  // before any heavy work
  base_ = open_checkpoint(options_.base);
  finetuned_ = open_checkpoint(options_.finetuned);
  MethodPlan plan;
  plan.output.metadata = finetuned_->metadata();
  plan.output.shard_size = options_.shard_size;
  plan.output.overwrite = options_.overwrite;
  plan.output.aux_files = finetuned_->aux_files();
  if (output_kind(options_.output) == OutputKind::SafetensorsFile) plan.output.aux_files.clear();
  nlohmann::json params = {{"mode", mode_name(options_.mode)},
                           {"variance_threshold", options_.variance_threshold},
                           {"min_rel_update", options_.min_rel_update},
                           {"strict", options_.strict}};
  if (options_.out_dtype) params["out_dtype"] = dtype_name(*options_.out_dtype);
  plan.output.provenance = {{"method", "monosoup"},
                            {"base", options_.base.string()},
                            {"finetuned", options_.finetuned.string()},
                            {"inputs", {{{"role", "base"}}, {{"role", "finetuned"}}}},
                            {"parameters", params}};
  plan.output.provenance["inputs"][0].update(describe_input(options_.base, *base_));
  plan.output.provenance["inputs"][1].update(describe_input(options_.finetuned, *finetuned_));

  std::error_code same_ec;
  SOUPKIT_INPUT_ERROR_IF(fs::equivalent(options_.base, options_.finetuned, same_ec),
                         "--base and --finetuned are the same model ({}): there is no update to reweight",
                         options_.base.string());
  // W1 = W0 + s B A with W0 this very base: MonoSoup of the rank-r update
  // from its factors (the adapter's own base, not another model).
  const CheckpointReader* adapter_base = finetuned_->low_rank_base();
  std::error_code base_ec;
  const bool adapter_on_this_base = adapter_base && fs::equivalent(adapter_base->path(), options_.base, base_ec);
  const bool low_rank_route = !options_.materialise_adapter && adapter_on_this_base;
  std::vector<bool> low_rank;
  std::vector<std::string> problems;  // warnings, or errors with --strict
  std::vector<double> smaller_side;  // of each candidate matrix (0 for kept tensors)
  std::vector<std::string> reasons;
  for (const auto& t : finetuned_->tensors()) {
    TensorInfo out = t;
    if (options_.out_dtype && is_float_arith(t.dtype)) out.dtype = *options_.out_dtype;
    plan.output.tensors.push_back(out);
    const TensorInfo* b = base_->find(t.name);
    std::string reason;
    if (!is_float_arith(t.dtype)) {
      reason = "not floating point";
    } else if (t.shape.size() < 2) {
      reason = "fewer than 2 dimensions";
    } else if (!b) {
      reason = "missing from base";
      problems.push_back(fmt::format("tensor '{}' is not in the base {}", t.name, options_.base.string()));
    } else if (b->shape != t.shape) {
      reason = fmt::format("shape differs from base {}", shape_string(b->shape));
      problems.push_back(fmt::format("tensor '{}' has shape {} in {} but {} in the base {}", t.name,
                                     shape_string(t.shape), options_.finetuned.string(), shape_string(b->shape),
                                     options_.base.string()));
    } else if (!is_float_arith(b->dtype)) {
      reason = fmt::format("base dtype {} is not floating point", dtype_name(b->dtype));
      problems.push_back(fmt::format("tensor '{}' is {} in the base {}", t.name, dtype_name(b->dtype), options_.base.string()));
    } else if (t.numel() == 0) {
      reason = "empty";
    } else if (adapter_on_this_base && finetuned_->reads_low_rank_base_unchanged(t)) {
      // W1 is W0's very bytes: a zero update, known without reading it
      // (either route would find "zero update" after a full SVD of zeros).
      reason = "not changed by the adapter";
    } else if (b->dtype != t.dtype) {
      problems.push_back(fmt::format("tensor '{}' is {} in {} but {} in the base {} (computed in float64 anyway)", t.name,
                                     dtype_name(t.dtype), options_.finetuned.string(), dtype_name(b->dtype),
                                     options_.base.string()));
    }
    reasons.push_back(reason);
    TaskPlan task;
    task.note = reason.empty() ? "reweighted" : "kept: " + reason;
    task.sources = {finetuned_->location(t)};
    if (b && reason.empty()) task.sources.push_back(base_->location(*b));
    // Estimated seconds on one rank, a least-squares fit to the measured
    // per-tensor times of the GPT-2-small benchmark (docs/benchmarks.md,
    // engine scaling): Gram + projection ~ m n r, eigensolver ~ r^3, I/O.
    // Only ratios matter for the balance; the fit took static largest-first
    // from 92% to 97% load balance on 4 ranks (dynamic scheduling: 97%).
    task.seconds = static_cast<double>(2 * t.nbytes() + out.nbytes()) / 1.5e9;
    // Kept tensors are streamed in row ranges of the engine's chunk size.
    task.peak_bytes = stream_copy_peak_bytes(t, out, context.chunk_bytes);
    const std::uint64_t update_rank = low_rank_route && reason.empty() ? finetuned_->low_rank_rank(t) : 0;
    const bool route = update_rank > 0 && t.shape.size() == 2 && update_rank <= std::min(t.shape[0], t.shape[1]);
    low_rank.push_back(route);
    if (route) {
      // Two thin QRs, an r x r SVD and one m x n x r product; W0 in float64.
      const double m = static_cast<double>(t.shape[0]), n = static_cast<double>(t.shape[1]);
      const double r = static_cast<double>(update_rank);
      task.note = "reweighted (low-rank update)";
      task.seconds += 2.5e-10 * (m + n) * r * r + 2e-10 * m * n * r;
      task.peak_bytes = 8 * m * n + 32 * (m + n) * r + static_cast<double>(b->nbytes() + out.nbytes());
      smaller_side.push_back(0);  // never worth a grid
    } else if (reason.empty()) {
      const double m = static_cast<double>(t.shape[0]), n = static_cast<double>(t.numel()) / m;
      const double r = std::min(m, n);
      task.seconds += 6.3e-11 * m * n * r + 7.2e-11 * r * r * r;
      // dW and W0 in float64, a float32 copy and product for the projection,
      // the Gram's reflectors and tridiagonal eigenvectors, raw input, output.
      task.peak_bytes = 22 * m * n + 16 * r * r + static_cast<double>(std::max(t.nbytes(), b->nbytes()) + out.nbytes());
      // Per grid rank: dW and W0 slices, Gram and eigenvector slices, the
      // projection's product, a row block of raw input and output; the
      // Gram's panel sums; and the rank's slice of the tridiagonal's
      // eigenvectors the projection takes (r x at most r/2: the whole when
      // no gap allows a split) with one destination's rows of it. (Gram
      // 8 r^2, its eigenvector rows at most 4 r^2, workspaces: 16 r^2 over
      // the grid; the rows being sent: 4 r^2 / P more.)
      task.grid_peak_bytes = (24 * m * n + 20 * r * r) / context.ranks + 64 * n * 16 + 4 * r * r + 6144 * r;
      smaller_side.push_back(r);
    } else {
      smaller_side.push_back(0);
    }
    plan.tasks.push_back(std::move(task));
  }

  // Which matrices ask for the grid: forced by --scalapack-min-dim, or
  // (automatic) a matrix that alone would outlast an even share of the
  // work. A grid runs one matrix at ~65% parallel efficiency on 2 ranks,
  // separate ranks on separate matrices at ~100% (docs/monosoup.md), so
  // nothing else is worth sending there. (The engine also sends those over
  // the memory budget.)
  double total_cost = 0;
  for (const auto& task : plan.tasks) total_cost += task.seconds;
  for (std::size_t i = 0; i < plan.tasks.size(); ++i) {
    TaskPlan& task = plan.tasks[i];
    if (task.grid_peak_bytes < 0) continue;
    const double r = smaller_side[i];
    task.wants_grid = options_.scalapack_min_dim > 0 ? r >= static_cast<double>(options_.scalapack_min_dim)
                                                     : context.ranks > 1 && r >= kAutoGridMinDim &&
                                                           task.seconds > total_cost / context.ranks;
  }
  if (!problems.empty()) {
    if (options_.strict) {
      std::string list;
      for (std::size_t i = 0; i < problems.size() && i < 5; ++i) list += (i ? "; " : "") + problems[i];
      if (problems.size() > 5) list += fmt::format("; and {} more", problems.size() - 5);
      throw InputError(fmt::format("--strict: {} tensor(s) of {} do not match the base: {}", problems.size(),
                                   options_.finetuned.string(), list));
    }
  }
  // A run that can process nothing is not a merge: an unrelated base, or
  // the wrong pair, gave exit 0 and a copy of the fine-tuned model before.
  std::size_t candidates = 0, matrices = 0;
  std::map<std::string, std::size_t> kept_because;
  for (std::size_t i = 0; i < reasons.size(); ++i) {
    const TensorInfo& t = plan.output.tensors[i];
    if (reasons[i].empty()) ++candidates;
    if (is_float_arith(finetuned_->tensors()[i].dtype) && t.shape.size() >= 2 && t.numel() > 0) {
      ++matrices;
      if (!reasons[i].empty()) ++kept_because[reasons[i].starts_with("shape") ? "shape differs from the base" : reasons[i]];
    }
  }
  std::string why;
  for (const auto& [reason, count] : kept_because) why += fmt::format("{}{} {}", why.empty() ? "" : ", ", count, reason);
  SOUPKIT_INPUT_ERROR_IF(matrices > 0 && candidates == 0,
                         "none of the {} floating-point matrices of {} can be merged with the base {} ({}): is it the "
                         "base this model was fine-tuned from?",
                         matrices, options_.finetuned.string(), options_.base.string(), why);
  if (!problems.empty())
    log::warn("monosoup: {} of {} matrices do not match the base and are kept unchanged ({}; first: {}); --strict "
              "refuses such a pair", problems.size(), matrices, why.empty() ? "dtype differs" : why, problems.front());
  plan.set_state(MonosoupState{reasons, low_rank});
  return plan;
}

void MonosoupMethod::prepare(const MethodPlan& plan) {
  if (!base_) base_ = open_checkpoint(options_.base);
  if (!finetuned_) finetuned_ = open_checkpoint(options_.finetuned);
  spec_ = plan.output;
  const auto state = plan.get_state<MonosoupState>();
  kept_reason_ = state.kept_reason;
  low_rank_ = state.low_rank;
  chunk_bytes_ = plan.context.chunk_bytes;
}

nlohmann::json MonosoupMethod::compute(std::size_t index, CheckpointWriter& writer) {
  const TensorInfo& out_info = spec_.tensors.at(index);
  const TensorInfo& w1 = finetuned_->planned(out_info.name);
  nlohmann::json record = {{"name", w1.name}, {"shape", w1.shape}};
  out_.resize(out_info.nbytes());
  auto keep = [&](const std::string& reason) {
    write_kept(*finetuned_, w1, out_info, out_);
    writer.write(index, out_);
    record["action"] = "kept";
    record["reason"] = reason;
    return record;
  };
  if (!kept_reason_[index].empty()) {
    // Known at planning: copied row block by row block, within the budget.
    stream_copy_same_name(*finetuned_, index, writer, chunk_bytes_, copy_buffers_);
    record["action"] = "kept";
    record["reason"] = kept_reason_[index];
    return record;
  }

  if (low_rank_.at(index)) return compute_low_rank(index, writer, std::move(record));
  const TensorInfo& w0 = base_->planned(w1.name);
  std::vector<double>& delta = delta_;
  std::vector<double>& base = base_values_;
  read_as_f64(*finetuned_, w1, raw_, delta);
  read_as_f64(*base_, w0, raw_, base);
  if (const auto bad = first_non_finite(delta); bad >= 0)
    throw InputError(fmt::format("{}: NaN or Inf in the fine-tuned weights (element {})", options_.finetuned.string(), bad));
  if (const auto bad = first_non_finite(base); bad >= 0)
    throw InputError(fmt::format("{}: NaN or Inf in the base weights (element {})", options_.base.string(), bad));
  for (std::size_t i = 0; i < delta.size(); ++i) delta[i] -= base[i];
  if (const auto bad = first_non_finite(delta); bad >= 0)
    throw InputError(fmt::format("update W1 - W0 overflows to Inf (element {})", bad));

  const double delta_norm = std::sqrt(sum_of_squares(delta));
  record["delta_norm"] = delta_norm;
  if (const auto reason = reason_to_keep(delta_norm, std::sqrt(sum_of_squares(base)), options_.min_rel_update);
      !reason.empty())
    return keep(reason);

  const auto m = inputs(index).m, n = inputs(index).n;
  TensorSteps steps(m, n);
  steps.read(1);
  const linalg::GramSvd svd = linalg::dgram_svd(delta.data(), m, n);
  steps.svd_done();
  if (energy(svd.singular) < kEps) return keep("zero update");

  const MonosoupCoefficients c = monosoup_coefficients(svd.singular, options_.mode, options_.variance_threshold);
  linalg::dspectral_reweight(delta.data(), svd, c.k, c.lambda_high, c.lambda_low);
  steps.reweight_done();
  for (std::size_t i = 0; i < delta.size(); ++i) delta[i] += base[i];
  store_from_f64(out_info.dtype, delta.data(), delta.size(), out_.data());
  writer.write(index, out_);
  // The distances of what was written: W read back from its bytes; W1 read
  // again into W0's place (W0 is done with; no third buffer).
  load_as_f64(out_info.dtype, out_.data(), delta.size(), delta.data());
  const double to_base_sq = squared_distance(delta.data(), base.data(), delta.size()), base_sq = sum_of_squares(base);
  read_as_f64(*finetuned_, w1, raw_, base);
  record_distances(record, to_base_sq, squared_distance(delta.data(), base.data(), delta.size()), base_sq,
                   sum_of_squares(base));
  describe(record, c, svd.r());
  return record;
}

// W1 = W0 + dW with dW = s L R of rank r (a LoRA adapter): the SVD of dW
// from its factors, the spectrum beyond r being zero, then the same
// coefficients and W = W0 + sum_i lambda_i s_i u_i v_i^T.
nlohmann::json MonosoupMethod::compute_low_rank(std::size_t index, CheckpointWriter& writer, nlohmann::json record) {
  const auto [w0, w1, out_info, m, n] = inputs(index);
  std::vector<double>& base = base_values_;
  read_as_f64(*base_, w0, raw_, base);
  if (const auto bad = first_non_finite(base); bad >= 0)
    throw InputError(fmt::format("{}: NaN or Inf in the base weights (element {})", options_.base.string(), bad));
  const auto update = finetuned_->low_rank_update(w1);
  SOUPKIT_ERROR_IF(!update, "{}: tensor '{}' has no low-rank update since planning", options_.finetuned.string(), w1.name);
  for (const auto* factor : {&update->left, &update->right})
    for (double v : *factor)
      SOUPKIT_INPUT_ERROR_IF(!std::isfinite(v), "{}: NaN or Inf in the LoRA factors of tensor '{}'",
                             options_.finetuned.string(), w1.name);
  const linalg::LowRankSvd svd = linalg::low_rank_svd(update->left.data(), update->right.data(), m, n,
                                                      static_cast<std::int64_t>(update->r), update->scale);
  record["route"] = "low-rank";
  record["update_rank"] = update->r;
  const double delta_norm = std::sqrt(energy(svd.singular));
  record["delta_norm"] = delta_norm;
  auto keep = [&](const std::string& reason) {
    out_.resize(out_info.nbytes());
    write_kept(*finetuned_, w1, out_info, out_);
    writer.write(index, out_);
    record["action"] = "kept";
    record["reason"] = reason;
    return record;
  };
  if (!std::isfinite(delta_norm)) throw InputError(fmt::format("update of tensor '{}' overflows to Inf", w1.name));
  if (const auto reason = reason_to_keep(delta_norm, std::sqrt(sum_of_squares(base)), options_.min_rel_update);
      !reason.empty())
    return keep(reason);
  if (energy(svd.singular) < kEps) return keep("zero update");
  // All min(m, n) singular values: those past r are exactly zero.
  std::vector<double> spectrum(static_cast<std::size_t>(std::min(m, n)), 0.0);
  std::copy(svd.singular.begin(), svd.singular.end(), spectrum.begin());
  const MonosoupCoefficients c = monosoup_coefficients(spectrum, options_.mode, options_.variance_threshold);
  std::vector<double> weight(svd.singular.size());
  for (std::size_t i = 0; i < weight.size(); ++i)
    weight[i] = static_cast<std::int64_t>(i) < c.k ? c.lambda_high : c.lambda_low;
  linalg::add_reweighted(svd, weight, base.data());
  out_.resize(out_info.nbytes());
  store_from_f64(out_info.dtype, base.data(), base.size(), out_.data());
  writer.write(index, out_);
  // The distances of what was written (W read back from its bytes) to W0
  // and to W1 = W0 + s L R as the adapter reader gives it, a row block at a
  // time (the route holds one tensor, not three).
  load_as_f64(out_info.dtype, out_.data(), base.size(), base.data());
  const auto rows_per_block = static_cast<std::int64_t>(std::max<std::int64_t>(1, (std::int64_t{1} << 16) / n));
  double sums[4] = {0, 0, 0, 0};  // |W-W0|^2, |W-W1|^2, |W0|^2, |W1|^2
  std::vector<std::byte> bytes;
  std::vector<double> values;
  for (std::int64_t first = 0; first < m; first += rows_per_block) {
    const std::int64_t rows = std::min(rows_per_block, m - first);
    const double* written = base.data() + static_cast<std::size_t>(first * n);
    const std::size_t count = static_cast<std::size_t>(rows * n);
    int which = 0;
    for (const auto& [reader, info] : {std::pair{base_.get(), &w0}, std::pair{finetuned_.get(), &w1}}) {
      bytes.resize(count * dtype_size(info->dtype));
      values.resize(count);
      reader->read_rows(*info, static_cast<std::uint64_t>(first), static_cast<std::uint64_t>(rows), bytes);
      load_as_f64(info->dtype, bytes.data(), count, values.data());
      sums[which] += squared_distance(written, values.data(), count);
      for (const double v : values) sums[2 + which] += v * v;
      ++which;
    }
  }
  record_distances(record, sums[0], sums[1], sums[2], sums[3]);
  describe(record, c, static_cast<std::int64_t>(spectrum.size()));
  return record;
}

MonosoupMethod::Inputs MonosoupMethod::inputs(std::size_t index) const {
  const TensorInfo& out = spec_.tensors.at(index);
  const TensorInfo& w1 = finetuned_->planned(out.name);
  const TensorInfo& w0 = base_->planned(out.name);
  const auto m = static_cast<std::int64_t>(w1.shape[0]);
  return {w0, w1, out, m, static_cast<std::int64_t>(w1.numel()) / m};
}

// The same computation with the matrix distributed over a P x 1 grid of the
// group's ranks: each rank reads only its block-cyclic row blocks of W0 and
// W1 straight from the files, and writes back only those rows, so nothing
// is gathered and no rank holds the whole matrix.
nlohmann::json MonosoupMethod::compute_grid(std::size_t index, const Communicator& group, CheckpointWriter& writer) {
  const auto [w0, w1, out_info, m, n] = inputs(index);
  nlohmann::json record = {{"name", w1.name}, {"shape", w1.shape}, {"grid", {group.size(), 1}}};
  const linalg::ProcessGrid grid(group, group.size(), 1);
  const linalg::MatrixLayout xl = linalg::make_layout(grid, m, n, kGridBlock, kGridBlock);
  struct RowBlock {
    std::int64_t local_row, global_row, rows;
  };
  std::vector<RowBlock> blocks;
  for (std::int64_t lr = 0; lr < xl.local_rows; lr += kGridBlock)
    blocks.push_back({lr, linalg::global_index(lr, kGridBlock, grid.my_row(), grid.rows()),
                      std::min<std::int64_t>(kGridBlock, xl.local_rows - lr)});
  const std::size_t lld = static_cast<std::size_t>(xl.lld());
  std::vector<double> x(std::max<std::size_t>(xl.local_size(), 1)), base(x.size());
  // The group's first rank reports for the group (the others' reports do
  // nothing): its share of the row blocks is as large as any rank's.
  TensorSteps steps(m, n);
  bool writing = false;
  auto for_each_block = [&](auto&& body) {
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      body(blocks[i]);
      const double fraction = static_cast<double>(i + 1) / static_cast<double>(blocks.size());
      writing ? steps.write(fraction) : steps.read(fraction);
    }
  };

  // Read this rank's rows of W1 - W0 into its column-major local piece.
  collectively(group, [&] {
    std::vector<double> rows1, rows0;
    for_each_block([&](const RowBlock& b) {
      const std::size_t count = static_cast<std::size_t>(b.rows * n);
      std::vector<std::byte> raw1(count * dtype_size(w1.dtype)), raw0(count * dtype_size(w0.dtype));
      finetuned_->read_rows(w1, b.global_row, b.rows, raw1);
      base_->read_rows(w0, b.global_row, b.rows, raw0);
      rows1.resize(count);
      rows0.resize(count);
      load_as_f64(w1.dtype, raw1.data(), count, rows1.data());
      load_as_f64(w0.dtype, raw0.data(), count, rows0.data());
      for (std::size_t e = 0; e < count; ++e) {
        const auto global = static_cast<std::int64_t>(e) + b.global_row * n;
        if (!std::isfinite(rows1[e]))
          throw InputError(fmt::format("{}: NaN or Inf in the fine-tuned weights (element {})", options_.finetuned.string(), global));
        if (!std::isfinite(rows0[e]))
          throw InputError(fmt::format("{}: NaN or Inf in the base weights (element {})", options_.base.string(), global));
        const double d = rows1[e] - rows0[e];
        if (!std::isfinite(d)) throw InputError(fmt::format("update W1 - W0 overflows to Inf (element {})", global));
        const std::size_t r = static_cast<std::size_t>(b.local_row) + e / static_cast<std::size_t>(n);
        const std::size_t c = e % static_cast<std::size_t>(n);
        x[r + c * lld] = d;
        base[r + c * lld] = rows0[e];
      }
    });
  });

  // Writes this rank's rows: `values` (local, column-major) + nothing, or W1's own bytes.
  auto write_rows = [&](const std::vector<double>* values) {
    collectively(group, [&] {
      std::vector<double> rows;
      for_each_block([&](const RowBlock& b) {
        const std::size_t count = static_cast<std::size_t>(b.rows * n);
        std::vector<std::byte> bytes(count * dtype_size(out_info.dtype));
        if (values) {
          rows.resize(count);
          for (std::size_t e = 0; e < count; ++e)
            rows[e] = (*values)[static_cast<std::size_t>(b.local_row) + e / static_cast<std::size_t>(n) +
                                (e % static_cast<std::size_t>(n)) * lld];
          store_from_f64(out_info.dtype, rows.data(), count, bytes.data());
        } else {
          std::vector<std::byte> raw(count * dtype_size(w1.dtype));
          finetuned_->read_rows(w1, b.global_row, b.rows, raw);
          cast_elements(w1.dtype, out_info.dtype, raw.data(), count, bytes.data());
        }
        writer.write_rows(index, static_cast<std::uint64_t>(b.global_row), static_cast<std::uint64_t>(b.rows), bytes);
      });
    });
  };
  auto keep = [&](const std::string& reason) {
    writing = true;
    write_rows(nullptr);
    record["action"] = "kept";
    record["reason"] = reason;
    return record;
  };

  const double delta_norm = std::sqrt(group.sum(sum_of_squares(x)));
  const double base_norm = std::sqrt(group.sum(sum_of_squares(base)));
  record["delta_norm"] = delta_norm;
  if (const auto reason = reason_to_keep(delta_norm, base_norm, options_.min_rel_update); !reason.empty())
    return keep(reason);
  const linalg::DistributedGramSvd svd = linalg::pdgram_svd(grid, xl, x.data());
  steps.svd_done();
  if (energy(svd.singular) < kEps) return keep("zero update");
  const MonosoupCoefficients c = monosoup_coefficients(svd.singular, options_.mode, options_.variance_threshold);
  linalg::pdspectral_reweight(grid, xl, x.data(), svd, c.k, c.lambda_high, c.lambda_low);
  steps.reweight_done();
  for (std::size_t i = 0; i < xl.local_size(); ++i) x[i] += base[i];
  writing = true;
  write_rows(&x);
  // The distances of what was written: this rank's rows of W as stored, and
  // of W1 read again block by block (as at the start), summed over the group.
  round_through(out_info.dtype, x.data(), xl.local_size());
  double sums[3] = {squared_distance(x.data(), base.data(), xl.local_size()), 0, 0};  // W-W0, W-W1, W1
  collectively(group, [&] {
    std::vector<std::byte> raw;
    std::vector<double> rows1;
    for (const RowBlock& b : blocks) {
      const std::size_t count = static_cast<std::size_t>(b.rows * n);
      raw.resize(count * dtype_size(w1.dtype));
      finetuned_->read_rows(w1, b.global_row, b.rows, raw);
      rows1.resize(count);
      load_as_f64(w1.dtype, raw.data(), count, rows1.data());
      for (std::size_t e = 0; e < count; ++e) {
        const double w = x[static_cast<std::size_t>(b.local_row) + e / static_cast<std::size_t>(n) +
                           (e % static_cast<std::size_t>(n)) * lld];
        sums[1] += (w - rows1[e]) * (w - rows1[e]);
        sums[2] += rows1[e] * rows1[e];
      }
    }
  });
  record_distances(record, group.sum(sums[0]), group.sum(sums[1]), base_norm * base_norm, group.sum(sums[2]));
  describe(record, c, svd.r());
  return record;
}

AuxSource MonosoupMethod::aux_contents(std::size_t index) {
  return AuxSource::copy_of(*finetuned_, spec_.aux_files.at(index).name);
}

void MonosoupMethod::finish(const std::vector<nlohmann::json>& records, double seconds) {
  std::size_t processed = 0;
  std::map<std::string, std::size_t> kept;
  double sum_k = 0, sum_lambda_high = 0;
  for (const auto& r : records) {
    if (r.value("action", "") == "monosoup") {
      ++processed;
      sum_k += r["k"].get<double>();
      sum_lambda_high += r["lambda_high"].get<double>();
    } else {
      ++kept[r.value("reason", "unknown")];
    }
  }
  nlohmann::json summary = {{"tensors", records.size()},
                            {"processed", processed},
                            {"kept", records.size() - processed},
                            {"kept_reasons", kept},
                            {"mode", mode_name(options_.mode)},
                            {"seconds", seconds}};
  // Over the reweighted matrices: how far the result is from each input,
  // relative to that input's norm, and how much of the update's norm it keeps.
  double to_base = 0, to_finetuned = 0, base_sq = 0, finetuned_sq = 0, update_sq = 0;
  std::vector<const nlohmann::json*> reweighted;
  for (const auto& r : records) {
    if (r.value("action", "") != "monosoup") continue;
    reweighted.push_back(&r);
    auto sq = [&](const char* key) { return r[key].get<double>() * r[key].get<double>(); };
    to_base += sq("distance_to_base");
    to_finetuned += sq("distance_to_finetuned");
    base_sq += sq("base_norm");
    finetuned_sq += sq("finetuned_norm");
    update_sq += sq("delta_norm");
  }
  if (processed) {
    summary["mean_k"] = sum_k / static_cast<double>(processed);
    summary["mean_lambda_high"] = sum_lambda_high / static_cast<double>(processed);
    if (base_sq > 0) summary["relative_distance_to_base"] = std::sqrt(to_base / base_sq);
    if (finetuned_sq > 0) summary["relative_distance_to_finetuned"] = std::sqrt(to_finetuned / finetuned_sq);
    if (update_sq > 0) summary["update_kept"] = std::sqrt(to_base / update_sq);
  }
  if (options_.report) {
    const nlohmann::json report = {
        {"provenance", report_provenance(seconds)}, {"tensors", records}, {"summary", summary}};
    write_side_file(*options_.report, report.dump(2) + "\n");
  }
  std::string reasons;
  for (const auto& [reason, count] : kept) reasons += fmt::format("{}{} {}", reasons.empty() ? "" : ", ", count, reason);
  log::info("monosoup: {} tensors processed, {} kept{} in {:.2f} s", processed, records.size() - processed,
            reasons.empty() ? "" : " (" + reasons + ")", seconds);
  if (processed)
    log::info("monosoup: mean k {:.1f}, mean lambda_high {:.3f} ({} mode)", sum_k / static_cast<double>(processed),
              sum_lambda_high / static_cast<double>(processed), mode_name(options_.mode));
  explain(summary, reweighted);
}

// What MonoSoup did, in words for someone new to it: the distances, what
// k and the lambdas mean on a few matrices, and where the details are.
void MonosoupMethod::explain(const nlohmann::json& summary, const std::vector<const nlohmann::json*>& reweighted) const {
  if (reweighted.empty() || !summary.contains("relative_distance_to_base") ||
      !summary.contains("relative_distance_to_finetuned") || !summary.contains("update_kept"))
    return;
  log::info("monosoup: over the {} reweighted matrices the result is {:.3g}% away from the base (relative to the "
            "base's size, Frobenius norm) and {:.3g}% away from the fine-tuned model: it keeps {:.3g}% of the "
            "fine-tuning update's size",
            reweighted.size(), 100 * summary["relative_distance_to_base"].get<double>(),
            100 * summary["relative_distance_to_finetuned"].get<double>(), 100 * summary["update_kept"].get<double>());
  log::info("monosoup: in each matrix the update W1 - W0 is split into directions (its singular vectors); the k "
            "strongest are kept at lambda_high, the rest are scaled by lambda_low, e.g.");
  std::vector<std::size_t> picks = {0, reweighted.size() / 2, reweighted.size() - 1};
  picks.erase(std::unique(picks.begin(), picks.end()), picks.end());
  for (const auto i : picks) {
    const nlohmann::json& r = *reweighted[i];
    log::info("monosoup:   {}: k = {} of {} directions, strongest x{:.3f}, the rest x{:.3f}",
              printable(r["name"].get<std::string>()), r["k"].get<std::int64_t>(), r["rank"].get<std::int64_t>(),
              r["lambda_high"].get<double>(), r["lambda_low"].get<double>());
  }
  if (options_.report)
    log::info("monosoup: every matrix's k, lambdas and distances: {}", options_.report->string());
}

}  // namespace soupkit
