#include "soupkit/methods/transplant.hpp"

#include "soupkit/engine/tensor_progress.hpp"
#include "soupkit/methods/token_matching.hpp"

#include "soupkit/io/side_file.hpp"
#include "soupkit/io/cast.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/linalg/omp.hpp"
#include "soupkit/util/log.hpp"

#include <algorithm>
#include <cmath>
#include <span>
#include <set>
#include <unordered_map>

namespace soupkit {
namespace {

using nlohmann::json;

constexpr std::int64_t kApproximate = -1;  // row_source_: fitted by OMP
constexpr std::int64_t kZero = -2;         // row_source_: padding or an unused id

// Where common architectures keep their input embedding and output matrix.
const std::vector<std::string> kEmbedNames = {
    "model.embed_tokens.weight",           "transformer.wte.weight",
    "model.decoder.embed_tokens.weight",   "gpt_neox.embed_in.weight",
    "transformer.word_embeddings.weight",  "model.language_model.embed_tokens.weight",
    "language_model.model.embed_tokens.weight", "transformer.embedding.word_embeddings.weight",
    "embed_tokens.weight",                 "tok_embeddings.weight",
    "wte.weight",                          "embeddings.word_embeddings.weight",
    "bert.embeddings.word_embeddings.weight"};
const std::vector<std::string> kLmHeadNames = {"lm_head.weight", "embed_out.weight", "output.weight",
                                               "language_model.lm_head.weight", "transformer.output_layer.weight"};

// Tokenizer files: the output takes the donor's and drops the base's.
const std::set<std::string> kTokenizerFiles = {"tokenizer.json",  "tokenizer_config.json", "special_tokens_map.json",
                                               "tokenizer.model", "vocab.json",            "merges.txt",
                                               "vocab.txt",       "added_tokens.json",     "spiece.model",
                                               "sentencepiece.bpe.model"};

// The embedding (required) or output matrix (optional: absent = tied):
// the named one, or the first usual name present.
const TensorInfo* find_matrix(const CheckpointReader& r, const std::string& override_name,
                              const std::vector<std::string>& usual, const char* what, const char* option,
                              bool required) {
  if (!override_name.empty()) {
    const TensorInfo* t = r.find(override_name);
    SOUPKIT_INPUT_ERROR_IF(!t, "{}: no tensor '{}' (given as the {} by {})", r.path().string(), override_name, what,
                           option);
    return t;
  }
  for (const auto& name : usual)
    if (const TensorInfo* t = r.find(name)) return t;
  if (!required) return nullptr;
  std::string names;
  for (const auto& n : usual) names += (names.empty() ? "" : ", ") + n;
  throw InputError(fmt::format("{}: embedding not found: none of the usual tensor names ({}); name it with {}",
                               r.path().string(), names, option));
}

// A matrix the tokenizer indexes: 2-D, floating point, a row per token.
void check_matrix(const CheckpointReader& r, const TensorInfo& t, const Tokenizer& tok) {
  SOUPKIT_INPUT_ERROR_IF(t.shape.size() != 2, "{}: tensor '{}' has shape {}, not [tokens, hidden]", r.path().string(),
                         t.name, shape_string(t.shape));
  SOUPKIT_INPUT_ERROR_IF(!is_float_arith(t.dtype), "{}: tensor '{}' is {}, not floating point", r.path().string(),
                         t.name, dtype_name(t.dtype));
  SOUPKIT_INPUT_ERROR_IF(t.shape[0] < static_cast<std::uint64_t>(tok.size()) || t.shape[1] == 0,
                         "{}: tensor '{}' has {} rows of {} but the tokenizer {} has {} tokens: inconsistent sizes",
                         r.path().string(), t.name, t.shape[0], t.shape[1], tok.source, tok.size());
}

// A model's config.json or generation_config.json, if it has one: a JSON
// object (its keys are rewritten for the donor's ids).
std::optional<json> read_json(const CheckpointReader& r, const std::string& name) {
  for (const auto& f : r.aux_files())
    if (f.name == name) {
      const std::string where = (r.path() / name).string();
      json config = parse_untrusted_json(r.read_aux(name), where);
      SOUPKIT_INPUT_ERROR_IF(!config.is_object(), "{}: expected a JSON object, found {}", where, config.type_name());
      return config;
    }
  return std::nullopt;
}

// The base's config (or generation config) with the donor's vocabulary
// size and special token ids: the base's ids mean nothing in the donor's
// vocabulary, so one the donor does not define is dropped.
std::string rewrite_config(json config, const std::optional<json>& donor_config, const Tokenizer& donor,
                           std::optional<std::int64_t> vocab_size) {
  if (vocab_size) config["vocab_size"] = *vocab_size;
  for (const std::string role : {"bos", "eos", "pad"}) {
    const std::string key = role + "_token_id";
    if (donor_config && donor_config->contains(key) && !(*donor_config)[key].is_null())
      config[key] = (*donor_config)[key];
    else if (donor.roles.count(role))
      config[key] = donor.roles.at(role);
    else
      config.erase(key);
  }
  return config.dump(2) + "\n";
}

// Reads rows `ids` (ascending, unique) of a matrix into `out` (ids.size()
// rows), in contiguous spans of at most `chunk_bytes`, packed in that order.
void read_selected_rows(const CheckpointReader& r, const TensorInfo& t, std::span<const std::int64_t> ids,
                        std::uint64_t chunk_bytes, std::span<std::byte> out) {
  const std::uint64_t rb = row_bytes(t);
  SOUPKIT_ERROR_IF(out.size() != ids.size() * rb, "internal: {} bytes for {} rows of {}", out.size(), ids.size(), rb);
  const auto span_rows = static_cast<std::int64_t>(std::max<std::uint64_t>(1, chunk_bytes / rb));
  std::vector<std::byte> span;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t j = i;
    while (j < ids.size() && ids[j] < ids[i] + span_rows) ++j;
    const auto first = static_cast<std::uint64_t>(ids[i]), count = static_cast<std::uint64_t>(ids[j - 1] - ids[i] + 1);
    span.resize(count * rb);
    r.read_rows(t, first, count, span);
    for (std::size_t k = i; k < j; ++k)
      std::copy_n(span.data() + (static_cast<std::uint64_t>(ids[k]) - first) * rb, rb, out.data() + k * rb);
    i = j;
  }
}

// Rows `ids` (ascending, unique) of a matrix as float32 into `out`
// (ids.size() x columns), read and converted a block of at most
// `chunk_bytes` at a time (no raw copy of them all is held); throws naming
// the file, tensor and row on NaN/Inf.
void read_rows_as_f32(const CheckpointReader& r, const TensorInfo& t, std::span<const std::int64_t> ids,
                      std::uint64_t chunk_bytes, std::span<float> out) {
  const std::uint64_t cols = t.shape[1], rb = row_bytes(t);
  SOUPKIT_ERROR_IF(out.size() != ids.size() * cols, "internal: {} floats for {} rows of {}", out.size(), ids.size(),
                   cols);
  const auto block = static_cast<std::size_t>(std::max<std::uint64_t>(1, chunk_bytes / rb));
  std::vector<std::byte> raw;
  for (std::size_t i = 0; i < ids.size(); i += block) {
    const auto part = ids.subspan(i, std::min(block, ids.size() - i));
    raw.resize(part.size() * rb);
    read_selected_rows(r, t, part, chunk_bytes, raw);
    float* dst = out.data() + i * cols;
    load_as_f32(t.dtype, raw.data(), part.size() * cols, dst);
    for (std::size_t e = 0; e < part.size() * cols; ++e)
      SOUPKIT_INPUT_ERROR_IF(!std::isfinite(dst[e]), "{}: tensor '{}': NaN or Inf in row {}", r.path().string(),
                             t.name, part[e / cols]);
  }
}

// Throws naming the file, tensor and row if packed raw rows hold NaN/Inf
// (converted a row at a time: no float copy of them is kept).
void check_finite_rows(const CheckpointReader& r, const TensorInfo& t, const std::vector<std::int64_t>& ids,
                       std::span<const std::byte> raw) {
  const std::uint64_t cols = t.shape[1], rb = row_bytes(t);
  std::vector<float> row(cols);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    load_as_f32(t.dtype, raw.data() + i * rb, cols, row.data());
    SOUPKIT_INPUT_ERROR_IF(std::any_of(row.begin(), row.end(), [](float v) { return !std::isfinite(v); }),
                           "{}: tensor '{}': NaN or Inf in row {}", r.path().string(), t.name, ids[i]);
  }
}

// The first output row of each rank: rows are split into contiguous ranges
// holding equal shares of the rows to approximate (the expensive ones).
std::vector<std::int64_t> rank_starts(const std::vector<std::int64_t>& source, int ranks) {
  std::vector<std::int64_t> approx_rows;
  for (std::size_t i = 0; i < source.size(); ++i)
    if (source[i] == kApproximate) approx_rows.push_back(static_cast<std::int64_t>(i));
  const auto total = static_cast<std::int64_t>(approx_rows.size()), rows = static_cast<std::int64_t>(source.size());
  std::vector<std::int64_t> start(static_cast<std::size_t>(ranks) + 1, rows);
  start[0] = 0;
  for (int r = 1; r < ranks; ++r) {
    const std::int64_t q = (r * total + ranks - 1) / ranks;  // first approximated token of rank r
    start[static_cast<std::size_t>(r)] = q < total ? approx_rows[static_cast<std::size_t>(q)] : rows;
  }
  return start;
}

json residual_summary(std::vector<double> v) {
  if (v.empty()) return json::object();
  std::sort(v.begin(), v.end());
  auto q = [&](double p) { return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5)]; };
  double sum = 0;
  for (double x : v) sum += x;
  return {{"min", v.front()}, {"p50", q(0.5)}, {"p90", q(0.9)}, {"p99", q(0.99)}, {"max", v.back()},
          {"mean", sum / static_cast<double>(v.size())}};
}

}  // namespace

MethodPlan TransplantMethod::plan(const PlanContext& context) {
  chunk_bytes_ = context.chunk_bytes;
  if (options_.report) check_report_replaceable(*options_.report);  // before any heavy work
  base_ = open_checkpoint(options_.base);
  donor_ = open_checkpoint(options_.donor);
  const Tokenizer base_tok = read_tokenizer(*base_);
  donor_tokenizer_ = read_tokenizer(*donor_);
  const Tokenizer& donor_tok = *donor_tokenizer_;
  const TokenMapping mapping = match_tokens(donor_tok, base_tok);

  const TensorInfo* base_embed = find_matrix(*base_, options_.embed_name, kEmbedNames, "embedding", "--embed-name", true);
  const TensorInfo* base_head =
      find_matrix(*base_, options_.lm_head_name, kLmHeadNames, "output matrix", "--lm-head-name", false);
  const TensorInfo* donor_embed = find_matrix(*donor_, options_.donor_embed_name, kEmbedNames, "embedding",
                                              "--donor-embed-name", true);
  const TensorInfo* donor_head = find_matrix(*donor_, options_.donor_lm_head_name, kLmHeadNames, "output matrix",
                                             "--donor-lm-head-name", false);
  for (const TensorInfo* t : {base_embed, base_head})
    if (t) check_matrix(*base_, *t, base_tok);
  for (const TensorInfo* t : {donor_embed, donor_head})
    if (t) check_matrix(*donor_, *t, donor_tok);
  SOUPKIT_INPUT_ERROR_IF(base_head == base_embed, "{}: the output matrix and the embedding are both '{}'",
                         options_.base.string(), base_embed->name);

  const std::int64_t pad = options_.pad_to_multiple_of;
  const std::int64_t out_rows = (donor_tok.size() + pad - 1) / pad * pad;
  row_source_.assign(static_cast<std::size_t>(out_rows), kZero);
  atoms_.clear();
  for (std::int64_t id = 0; id < donor_tok.size(); ++id) {
    const auto i = static_cast<std::size_t>(id);
    switch (mapping.match[i]) {
      case TokenMatch::Exact:
        atoms_.push_back(id);
        [[fallthrough]];
      case TokenMatch::Special:
        row_source_[i] = mapping.base_id[i];
        break;
      case TokenMatch::Approximate:
        row_source_[i] = kApproximate;
        break;
      case TokenMatch::Unused:
        break;
    }
  }
  if (atoms_.empty() && mapping.approximate > 0)
    log::warn("transplant: the tokenizers of {} and {} share no token text: the {} donor tokens to approximate get zero rows",
              options_.base.string(), options_.donor.string(), mapping.approximate);

  MethodPlan plan;
  plan.output.metadata = base_->metadata();
  plan.output.shard_size = options_.shard_size;
  plan.output.overwrite = options_.overwrite;
  plan.output.provenance = {{"method", "transplant"},
                            {"base", options_.base.string()},
                            {"donor", options_.donor.string()},
                            {"inputs", {describe_input(options_.base, *base_), describe_input(options_.donor, *donor_)}},
                            {"parameters", {{"k", options_.k}, {"pad_to_multiple_of", pad}}}};
  const auto n_atoms = static_cast<double>(atoms_.size()), n_approx = static_cast<double>(mapping.approximate);
  TransplantState state;
  for (const auto& t : base_->tensors()) {
    const std::size_t index = plan.output.tensors.size();
    TensorInfo out = t;
    const TensorInfo* donor_matrix = &t == base_embed ? donor_embed : &t == base_head ? (donor_head ? donor_head : donor_embed) : nullptr;
    if (!donor_matrix) {
      plan.output.tensors.push_back(out);
      TaskPlan copy;
      copy.seconds = static_cast<double>(2 * t.nbytes()) / 1.5e9;
      copy.peak_bytes = stream_copy_peak_bytes(t, out, context.chunk_bytes);
      copy.sources = {base_->location(t)};
      plan.tasks.push_back(std::move(copy));
      continue;
    }
    out.shape[0] = static_cast<std::uint64_t>(out_rows);
    plan.output.tensors.push_back(out);
    const double dd = static_cast<double>(donor_matrix->shape[1]), db = static_cast<double>(t.shape[1]);
    // One sgemm of atoms x hidden x targets per OMP step (70-90 GFLOP/s a
    // rank measured, docs/benchmarks.md), plus reading both matrices.
    TaskPlan fit;
    fit.sources = {base_->location(t), donor_->location(*donor_matrix)};
    fit.seconds = 2.0 * options_.k * n_atoms * dd * n_approx / 7e10 +
                  static_cast<double>(donor_matrix->nbytes() + t.nbytes() + out.nbytes()) / 1.5e9;
    // Per rank: its share of the node's one copy of the dictionary
    // (float32) and the atoms' base rows (raw), divided among the node's
    // ranks (the fewest any node has: the tightest share), then the
    // correlation block, this rank's targets and fits, a chunk of I/O.
    const double share = n_approx / context.ranks;
    const double node_shared = n_atoms * (4 * dd + static_cast<double>(dtype_size(t.dtype)) * db);
    // The fit always runs on all ranks (each fits its share of the tokens).
    fit.wants_grid = true;
    fit.grid_peak_bytes = node_shared / context.ranks_per_node +
                          n_atoms * 4 * std::clamp(33554432.0 / std::max(n_atoms, 1.0), 128.0, 1024.0) +
                          share * (4 * dd + 12.0 * options_.k) +
                          2 * static_cast<double>(std::min(context.chunk_bytes, out.nbytes()));
    fit.peak_bytes = fit.grid_peak_bytes;
    fit.advice = fmt::format("fitting {} tokens over {} shared ones, with a {} dictionary held once per node and "
                             "divided among its ranks (at least {} ranks on every node); raise --memory-budget or run "
                             "more ranks per node",
                             mapping.approximate, atoms_.size(), human_bytes(static_cast<std::uint64_t>(node_shared)),
                             context.ranks_per_node);
    plan.tasks.push_back(std::move(fit));
    state.rebuilds[index] = {donor_matrix->name, t.name};
  }

  // Aux files: the base's, minus its tokenizer, plus the donor's tokenizer;
  // config.json and generation_config.json rewritten for the donor's ids.
  rewritten_aux_.clear();
  aux_source_.clear();
  const auto donor_config = read_json(*donor_, "config.json");
  for (const auto& f : base_->aux_files()) {
    if (kTokenizerFiles.count(f.name)) continue;
    aux_source_[f.name] = base_.get();
    if (f.name == "config.json" || f.name == "generation_config.json") {
      const auto config = read_json(*base_, f.name);
      rewritten_aux_[f.name] = rewrite_config(*config, f.name == "config.json" ? donor_config : read_json(*donor_, f.name),
                                              donor_tok, f.name == "config.json" ? std::optional(out_rows) : std::nullopt);
    }
  }
  for (const auto& f : donor_->aux_files())
    if (kTokenizerFiles.count(f.name)) aux_source_[f.name] = donor_.get();
  for (const auto& [name, reader] : aux_source_) {
    std::uint64_t size = 0;
    for (const auto& f : reader->aux_files())
      if (f.name == name) size = f.size;
    if (const auto it = rewritten_aux_.find(name); it != rewritten_aux_.end()) size = it->second.size();
    plan.output.aux_files.push_back({name, size});
  }
  if (output_kind(options_.output) == OutputKind::SafetensorsFile) {
    log::warn("{}: a single .safetensors file cannot hold the donor's tokenizer files; write to a directory to keep them",
              options_.output.string());
    plan.output.aux_files.clear();
  }

  counts_ = {{"donor_vocab", donor_tok.size()},      {"base_vocab", base_tok.size()},
             {"output_rows", out_rows},              {"exact", mapping.exact},
             {"special", mapping.special},           {"approximated", mapping.approximate},
             {"unused_ids", mapping.unused},         {"padding_rows", out_rows - donor_tok.size()},
             {"donor_decoding", donor_tok.decoding}, {"base_decoding", base_tok.decoding},
             {"tied_output", base_head == nullptr}};
  log::info("transplant: donor {} tokens ({}), base {} tokens ({}): {} exact, {} special by role, {} to approximate "
            "with k = {}",
            donor_tok.size(), donor_tok.decoding, base_tok.size(), base_tok.decoding, mapping.exact, mapping.special,
            mapping.approximate, options_.k);
  state.row_source = row_source_;
  state.atoms = atoms_;
  plan.set_state(state);
  return plan;
}

void TransplantMethod::prepare(const MethodPlan& plan) {
  if (!base_) base_ = open_checkpoint(options_.base);
  if (!donor_) donor_ = open_checkpoint(options_.donor);
  spec_ = plan.output;
  auto state = plan.get_state<TransplantState>();
  row_source_ = std::move(state.row_source);
  atoms_ = std::move(state.atoms);
  rebuilds_ = std::move(state.rebuilds);
  chunk_bytes_ = plan.context.chunk_bytes;
}

nlohmann::json TransplantMethod::compute(std::size_t index, CheckpointWriter& writer) {
  stream_copy_same_name(*base_, index, writer, chunk_bytes_, buffers_);
  return nullptr;
}

// All ranks: each takes a contiguous range of output rows (equal shares of
// the rows to approximate), fits its rows by OMP against the whole
// dictionary, and writes them; shared rows are the base's bytes, padding zero.
nlohmann::json TransplantMethod::compute_grid(std::size_t index, const Communicator& group, CheckpointWriter& writer) {
  const TransplantRebuild& rb = rebuilds_.at(index);
  const TensorInfo& out = spec_.tensors.at(index);
  const TensorInfo& dt = donor_->planned(rb.donor_tensor);
  const TensorInfo& bt = base_->planned(rb.base_tensor);
  const auto starts = rank_starts(row_source_, group.size());
  const std::int64_t lo = starts[static_cast<std::size_t>(group.rank())], hi = starts[static_cast<std::size_t>(group.rank()) + 1];
  std::vector<std::int64_t> targets;  // donor ids = output rows this rank fits
  for (std::int64_t row = lo; row < hi; ++row)
    if (row_source_[static_cast<std::size_t>(row)] == kApproximate) targets.push_back(row);
  // Base rows needed, the same on every rank: the atoms' (to rebuild) and
  // the special tokens' (to copy; every other shared row is an atom's).
  std::vector<std::int64_t> base_ids;
  for (auto source : row_source_)
    if (source >= 0) base_ids.push_back(source);
  std::sort(base_ids.begin(), base_ids.end());
  base_ids.erase(std::unique(base_ids.begin(), base_ids.end()), base_ids.end());

  // The dictionary (float32) and the base rows (raw) are held once per
  // node, in memory its ranks share, filled by the node's first rank: the
  // group's rank 0 reads them (P ranks reading gigabytes each from a shared
  // file system would cost far more) and broadcasts them to the other
  // nodes' first ranks. Each rank reads its own targets.
  const Communicator node = group.split_shared();
  const Communicator leaders = group.split(node.is_root() ? 0 : 1, group.rank());
  const std::size_t dictionary_bytes = atoms_.size() * dt.shape[1] * sizeof(float);
  const SharedWindow shared = node.allocate_shared(dictionary_bytes + base_ids.size() * row_bytes(bt));
  const std::span<float> dictionary(reinterpret_cast<float*>(shared.bytes().data()), atoms_.size() * dt.shape[1]);
  const std::span<std::byte> base_raw = shared.bytes().subspan(dictionary_bytes);
  std::vector<float> x;
  collectively(group, [&] {
    if (group.is_root()) {
      // The reader must be the first rank of its node and of the leaders (split orders by group rank).
      SOUPKIT_ERROR_IF(!node.is_root() || !leaders.is_root(),
                       "internal: the group's rank 0 is not its node's first rank");
      read_rows_as_f32(*donor_, dt, atoms_, chunk_bytes_, dictionary);
      read_selected_rows(*base_, bt, base_ids, chunk_bytes_, base_raw);
      check_finite_rows(*base_, bt, base_ids, base_raw);
    }
  });
  if (node.is_root()) {
    leaders.broadcast_bytes(std::as_writable_bytes(dictionary));
    leaders.broadcast_bytes(base_raw);
  }
  shared.publish();
  collectively(group, [&] {
    x.resize(targets.size() * dt.shape[1]);
    read_rows_as_f32(*donor_, dt, targets, chunk_bytes_, x);
  });
  const auto dd = static_cast<std::int64_t>(dt.shape[1]);
  const auto db = static_cast<std::size_t>(bt.shape[1]);
  linalg::OmpResult fit;
  std::unordered_map<std::int64_t, std::size_t> base_pos;  // base id -> position in base_raw
  std::vector<std::size_t> atom_base(atoms_.size());       // atom -> position of its base row
  collectively(group, [&] {
    linalg::OmpOptions omp_options;
    omp_options.k = options_.k;
    // The fits are nearly all of the time: they are the tensor's progress
    // (this rank's share; the group's first rank reports for all, and the
    // shares are equal), the writes after them its last percent.
    omp_options.on_batch = [](std::int64_t done, std::int64_t total) {
      report_tensor_progress(static_cast<std::uint64_t>(done) * 99, static_cast<std::uint64_t>(total) * 100);
    };
    fit = linalg::batched_omp(dictionary.data(), static_cast<std::int64_t>(atoms_.size()), dd, x.data(),
                              static_cast<std::int64_t>(targets.size()), omp_options);
    for (std::size_t i = 0; i < base_ids.size(); ++i) base_pos[base_ids[i]] = i;
    for (std::size_t a = 0; a < atoms_.size(); ++a)
      atom_base[a] = base_pos.at(row_source_[static_cast<std::size_t>(atoms_[a])]);
  });

  collectively(group, [&] {
    const std::uint64_t orb = row_bytes(out);
    const auto step = static_cast<std::int64_t>(std::max<std::uint64_t>(1, chunk_bytes_ / orb));
    std::vector<std::byte> bytes;
    std::vector<double> row(db), atom_row(db);
    const std::uint64_t base_rb = row_bytes(bt);
    std::size_t next_target = 0;
    for (std::int64_t first = lo; first < hi; first += step) {
      const std::int64_t count = std::min(step, hi - first);
      bytes.assign(static_cast<std::size_t>(count) * orb, std::byte{0});
      for (std::int64_t r = 0; r < count; ++r) {
        const std::int64_t source = row_source_[static_cast<std::size_t>(first + r)];
        std::byte* dst = bytes.data() + static_cast<std::size_t>(r) * orb;
        if (source >= 0) {
          std::copy_n(base_raw.data() + base_pos.at(source) * orb, orb, dst);
        } else if (source == kApproximate) {
          const std::size_t t = next_target++;
          std::fill(row.begin(), row.end(), 0.0);
          for (int s = 0; s < fit.used[t]; ++s) {
            const auto slot = t * static_cast<std::size_t>(fit.k) + static_cast<std::size_t>(s);
            const double c = fit.coefficients[slot];
            load_as_f64(bt.dtype, base_raw.data() + atom_base[static_cast<std::size_t>(fit.atoms[slot])] * base_rb, db,
                        atom_row.data());
            for (std::size_t e = 0; e < db; ++e) row[e] += c * atom_row[e];
          }
          store_from_f64(out.dtype, row.data(), db, dst);
        }
      }
      writer.write_rows(index, static_cast<std::uint64_t>(first), static_cast<std::uint64_t>(count), bytes);
    }
  });

  // The fits' quality, gathered on the group's rank 0 for the report.
  json mine = {{"ids", targets}, {"residual", fit.relative_residual}, {"used", fit.used}};
  const auto parts = group.gather(mine.dump());
  if (!group.is_root()) return nullptr;
  std::vector<double> residuals;
  std::vector<std::pair<double, std::int64_t>> by_residual;
  json not_approximated = json::array();
  double mean_atoms = 0;
  for (const auto& part : parts) {
    const json p = json::parse(part);
    const auto ids = p["ids"].get<std::vector<std::int64_t>>();
    const auto res = p["residual"].get<std::vector<double>>();
    const auto used = p["used"].get<std::vector<int>>();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (used[i] == 0) {
        not_approximated.push_back(ids[i]);
        continue;
      }
      residuals.push_back(res[i]);
      by_residual.push_back({res[i], ids[i]});
      mean_atoms += used[i];
    }
  }
  std::sort(by_residual.begin(), by_residual.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  json worst = json::array();
  for (std::size_t i = 0; i < by_residual.size() && i < 20; ++i) worst.push_back({by_residual[i].second, by_residual[i].first});
  return {{"name", out.name},
          {"donor_tensor", dt.name},
          {"shape", out.shape},
          {"approximated", residuals.size()},
          {"mean_atoms", residuals.empty() ? 0.0 : mean_atoms / static_cast<double>(residuals.size())},
          {"relative_residual", residual_summary(residuals)},
          {"worst", worst},
          {"not_approximated", not_approximated}};
}

AuxSource TransplantMethod::aux_contents(std::size_t index) {
  const std::string& name = spec_.aux_files.at(index).name;
  if (const auto it = rewritten_aux_.find(name); it != rewritten_aux_.end()) return AuxSource::bytes(it->second);
  return AuxSource::copy_of(*aux_source_.at(name), name);
}

void TransplantMethod::finish(const std::vector<nlohmann::json>& records, double seconds) {
  const Tokenizer& donor = *donor_tokenizer_;
  auto token = [&](std::int64_t id) { return donor.pieces.at(static_cast<std::size_t>(id)); };
  json matrices = json::array();
  for (const auto& r : records) {
    if (!r.is_object() || !r.contains("relative_residual")) continue;
    json m = r;
    for (auto& w : m["worst"]) w = {{"id", w[0]}, {"token", token(w[0].get<std::int64_t>())}, {"relative_residual", w[1]}};
    json failed = json::array();
    for (const auto& id : r["not_approximated"]) failed.push_back({{"id", id}, {"token", token(id.get<std::int64_t>())}});
    m["not_approximated"] = failed;
    matrices.push_back(m);
    const auto& s = r["relative_residual"];
    log::info("transplant: {}: {} rows fitted, {} not approximated; relative residual median {:.3g}, p90 {:.3g}, max {:.3g}",
              r["name"].get<std::string>(), r["approximated"].get<std::size_t>(), failed.size(),
              s.value("p50", 0.0), s.value("p90", 0.0), s.value("max", 0.0));
  }
  if (options_.report) {
    const json report = {{"provenance", report_provenance(seconds)},
                         {"tokens", counts_},
                         {"k", options_.k},
                         {"matrices", matrices},
                         {"seconds", seconds}};
    write_side_file(*options_.report, report.dump(2) + "\n");
  }
  log::info("transplant: {} exact, {} special, {} approximated tokens in {:.2f} s", counts_["exact"].get<std::size_t>(),
            counts_["special"].get<std::size_t>(), counts_["approximated"].get<std::size_t>(), seconds);
}

}  // namespace soupkit
