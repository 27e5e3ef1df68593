#include "soupkit/methods/monosoup.hpp"

#include "soupkit/cast.hpp"
#include "soupkit/error.hpp"
#include "soupkit/linalg/gram_svd.hpp"
#include "soupkit/log.hpp"

#include <cmath>
#include <map>

namespace soupkit {
namespace {

constexpr double kEps = kMonosoupEps;

std::string mode_name(MonosoupMode mode) { return mode == MonosoupMode::EffectiveRank ? "effective-rank" : "variance"; }

// Reads a tensor of a float dtype into doubles.
std::vector<double> read_as_f64(const CheckpointReader& reader, const TensorInfo& t) {
  const auto raw = reader.read(t);
  std::vector<double> values(t.numel());
  load_as_f64(t.dtype, raw.data(), values.size(), values.data());
  return values;
}

// Index of the first NaN/Inf, or -1.
std::int64_t first_non_finite(const std::vector<double>& v) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) return static_cast<std::int64_t>(i);
  return -1;
}

double frobenius(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

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

MethodPlan MonosoupMethod::plan() {
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
                            {"parameters", params}};

  std::vector<std::string> problems;  // warnings, or errors with --strict
  nlohmann::json reasons = nlohmann::json::array();
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
    } else if (b->dtype != t.dtype) {
      problems.push_back(fmt::format("tensor '{}' is {} in {} but {} in the base {} (computed in float64 anyway)", t.name,
                                     dtype_name(t.dtype), options_.finetuned.string(), dtype_name(b->dtype),
                                     options_.base.string()));
    }
    reasons.push_back(reason);
    // Cost in rough seconds: Gram (m n r) + eigensolver (~9 r^3) flops at a few GFLOP/s, plus I/O.
    double cost = static_cast<double>(t.nbytes() + out.nbytes()) / 1e9;
    if (reason.empty()) {
      const double m = static_cast<double>(t.shape[0]), n = static_cast<double>(t.numel()) / m, r = std::min(m, n);
      cost += (m * n * r + 9 * r * r * r) / 5e9;
    }
    plan.costs.push_back(cost);
  }
  if (!problems.empty()) {
    if (options_.strict) {
      std::string list;
      for (std::size_t i = 0; i < problems.size() && i < 5; ++i) list += (i ? "; " : "") + problems[i];
      if (problems.size() > 5) list += fmt::format("; and {} more", problems.size() - 5);
      throw InputError(fmt::format("--strict: {} tensor(s) of {} do not match the base: {}", problems.size(),
                                   options_.finetuned.string(), list));
    }
    for (std::size_t i = 0; i < problems.size() && i < 10; ++i) log::warn("{}; keeping it unchanged", problems[i]);
    if (problems.size() > 10) log::warn("... and {} more tensors like these", problems.size() - 10);
  }
  plan.state = {{"kept_reason", reasons}};
  return plan;
}

void MonosoupMethod::prepare(const MethodPlan& plan) {
  if (!base_) base_ = open_checkpoint(options_.base);
  if (!finetuned_) finetuned_ = open_checkpoint(options_.finetuned);
  spec_ = plan.output;
  kept_reason_ = plan.state.at("kept_reason").get<std::vector<std::string>>();
}

nlohmann::json MonosoupMethod::compute(std::size_t index, std::span<std::byte> out) {
  const TensorInfo& out_info = spec_.tensors.at(index);
  const TensorInfo& w1 = *finetuned_->find(out_info.name);
  nlohmann::json record = {{"name", w1.name}, {"shape", w1.shape}};
  auto keep = [&](const std::string& reason) {
    write_kept(*finetuned_, w1, out_info, out);
    record["action"] = "kept";
    record["reason"] = reason;
    return record;
  };
  if (!kept_reason_[index].empty()) return keep(kept_reason_[index]);

  const TensorInfo& w0 = *base_->find(w1.name);
  std::vector<double> delta = read_as_f64(*finetuned_, w1);
  const std::vector<double> base = read_as_f64(*base_, w0);
  if (const auto bad = first_non_finite(delta); bad >= 0)
    throw InputError(fmt::format("{}: NaN or Inf in the fine-tuned weights (element {})", options_.finetuned.string(), bad));
  if (const auto bad = first_non_finite(base); bad >= 0)
    throw InputError(fmt::format("{}: NaN or Inf in the base weights (element {})", options_.base.string(), bad));
  for (std::size_t i = 0; i < delta.size(); ++i) delta[i] -= base[i];
  if (const auto bad = first_non_finite(delta); bad >= 0)
    throw InputError(fmt::format("update W1 - W0 overflows to Inf (element {})", bad));

  const double delta_norm = frobenius(delta), base_norm = frobenius(base);
  record["delta_norm"] = delta_norm;
  if (base_norm < kEps ? delta_norm < kEps : delta_norm / (base_norm + kEps) < options_.min_rel_update)
    return keep(base_norm < kEps ? "zero update" : "update below --min-rel-update");

  const std::int64_t m = static_cast<std::int64_t>(w1.shape[0]);
  const std::int64_t n = static_cast<std::int64_t>(w1.numel()) / m;
  const linalg::GramSvd svd = linalg::dgram_svd(delta.data(), m, n);
  double energy = 0;
  for (double s : svd.singular) energy += s * s;
  if (energy < kEps) return keep("zero update");

  const MonosoupCoefficients c = monosoup_coefficients(svd.singular, options_.mode, options_.variance_threshold);
  linalg::dspectral_reweight(delta.data(), svd, c.k, c.lambda_high, c.lambda_low);
  for (std::size_t i = 0; i < delta.size(); ++i) delta[i] += base[i];
  store_from_f64(out_info.dtype, delta.data(), delta.size(), out.data());

  record["action"] = "monosoup";
  record["k"] = c.k;
  record["rank"] = svd.r();
  record["effective_rank"] = c.effective_rank;
  record["P_k"] = c.energy_k;
  record["rho"] = c.rho;
  record["lambda_high"] = c.lambda_high;
  record["lambda_low"] = c.lambda_low;
  return record;
}

std::string MonosoupMethod::aux_contents(std::size_t index) {
  return finetuned_->read_aux(spec_.aux_files.at(index).name);
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
  if (processed) {
    summary["mean_k"] = sum_k / static_cast<double>(processed);
    summary["mean_lambda_high"] = sum_lambda_high / static_cast<double>(processed);
  }
  if (options_.report) {
    const nlohmann::json report = {{"tensors", records}, {"summary", summary}};
    fs::path partial = *options_.report;
    partial += ".partial";
    write_text_file(partial, report.dump(2) + "\n");
    fs::rename(partial, *options_.report);
  }
  std::string reasons;
  for (const auto& [reason, count] : kept) reasons += fmt::format("{}{} {}", reasons.empty() ? "" : ", ", count, reason);
  log::info("monosoup: {} tensors processed, {} kept{} in {:.2f} s", processed, records.size() - processed,
            reasons.empty() ? "" : " (" + reasons + ")", seconds);
  if (processed)
    log::info("monosoup: mean k {:.1f}, mean lambda_high {:.3f} ({} mode)", sum_k / static_cast<double>(processed),
              sum_lambda_high / static_cast<double>(processed), mode_name(options_.mode));
}

}  // namespace soupkit
