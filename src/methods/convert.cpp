#include "soupkit/methods/convert.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/log.hpp"

namespace soupkit {

MethodPlan ConvertMethod::plan(const PlanContext& context) {
  reader_ = open_checkpoint(options_.input);
  MethodPlan plan;
  plan.output.metadata = reader_->metadata();
  plan.output.shard_size = options_.shard_size;
  plan.output.overwrite = options_.overwrite;
  nlohmann::json params = nlohmann::json::object();
  if (options_.dtype) params["dtype"] = std::string(dtype_name(*options_.dtype));
  plan.output.provenance = {{"method", "convert"},
                            {"source", options_.input.string()},
                            {"inputs", {describe_input(options_.input, *reader_)}},
                            {"parameters", params}};
  for (const auto& t : reader_->tensors()) {
    TensorInfo out = t;
    if (options_.dtype && is_float_arith(t.dtype)) out.dtype = *options_.dtype;
    plan.output.tensors.push_back(out);
    TaskPlan task;
    task.sources = {reader_->location(t)};
    task.seconds = static_cast<double>(t.nbytes() + out.nbytes()) / 1.5e9;
    task.peak_bytes = stream_copy_peak_bytes(t, out, context.chunk_bytes);
    plan.tasks.push_back(std::move(task));
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
  chunk_bytes_ = plan.context.chunk_bytes;
}

nlohmann::json ConvertMethod::compute(std::size_t index, CheckpointWriter& writer) {
  stream_copy_same_name(*reader_, index, writer, chunk_bytes_, buffers_);
  return nullptr;
}

AuxSource ConvertMethod::aux_contents(std::size_t index) {
  return AuxSource::copy_of(*reader_, spec_.aux_files.at(index).name);
}

}  // namespace soupkit
