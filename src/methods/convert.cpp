#include "soupkit/methods/convert.hpp"

#include "soupkit/cast.hpp"
#include "soupkit/error.hpp"
#include "soupkit/log.hpp"

namespace soupkit {

MethodPlan ConvertMethod::plan() {
  reader_ = open_checkpoint(options_.input);
  MethodPlan plan;
  plan.output.metadata = reader_->metadata();
  plan.output.shard_size = options_.shard_size;
  plan.output.overwrite = options_.overwrite;
  nlohmann::json params = nlohmann::json::object();
  if (options_.dtype) params["dtype"] = std::string(dtype_name(*options_.dtype));
  plan.output.provenance = {{"method", "convert"}, {"source", options_.input.string()}, {"parameters", params}};
  for (const auto& t : reader_->tensors()) {
    TensorInfo out = t;
    if (options_.dtype && is_float_arith(t.dtype)) out.dtype = *options_.dtype;
    plan.output.tensors.push_back(out);
    plan.costs.push_back(static_cast<double>(t.nbytes() + out.nbytes()));
  }
  plan.output.aux_files = reader_->aux_files();
  if (output_kind(options_.output) == OutputKind::SafetensorsFile && !plan.output.aux_files.empty()) {
    log::warn("{}: a single .safetensors file cannot hold {} non-weight file(s) of {} (config, tokenizer); "
              "write to a directory to keep them",
              options_.output.string(), plan.output.aux_files.size(), options_.input.string());
    plan.output.aux_files.clear();
  }
  return plan;
}

void ConvertMethod::prepare(const MethodPlan& plan) {
  if (!reader_) reader_ = open_checkpoint(options_.input);
  spec_ = plan.output;
}

nlohmann::json ConvertMethod::compute(std::size_t index, std::span<std::byte> out) {
  const TensorInfo& want = spec_.tensors.at(index);
  const TensorInfo* have = reader_->find(want.name);
  SOUPKIT_ERROR_IF(!have, "{}: tensor '{}' disappeared since planning", options_.input.string(), want.name);
  if (have->dtype == want.dtype) {
    reader_->read(*have, out);
    return nullptr;
  }
  scratch_.resize(have->nbytes());
  reader_->read(*have, scratch_);
  cast_elements(have->dtype, want.dtype, scratch_.data(), have->numel(), out.data());
  return nullptr;
}

std::string ConvertMethod::aux_contents(std::size_t index) {
  return reader_->read_aux(spec_.aux_files.at(index).name);
}

}  // namespace soupkit
