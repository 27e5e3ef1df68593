#pragma once
// What the merges of task vectors (W_i - W_base) share, as mergekit's
// generalized task arithmetic does: a base and models holding the base's
// tensors, one output tensor per base tensor (its dtype unless --out-dtype),
// integer/bool/fp8 tensors required identical everywhere and copied, and
// floating-point tensors streamed in row blocks, read and widened to float64
// by this class. A method (task_arithmetic, ties, ...) says how one float
// tensor is merged (merge_tensor) and what it costs (working bytes per
// element, passes over the inputs).
#include "soupkit/engine/engine.hpp"
#include "soupkit/methods/method_registry.hpp"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace soupkit {

class TaskVectorMerge : public Method {
 public:
  // `label`: the method's name in logs and provenance. Throws InputError
  // when there is no model.
  TaskVectorMerge(std::string label, const MergeInputs& in);
  std::string name() const override { return label_; }
  MethodPlan plan(const PlanContext& context) final;
  void prepare(const MethodPlan& plan) final;
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) final;
  AuxSource aux_contents(std::size_t index) final;

 protected:
  // The inputs of one output tensor: the base's (in[0]) and each model's.
  using Inputs = std::vector<const TensorInfo*>;

  // The method's parameters, for provenance (and so for the resume journal's fingerprint).
  virtual nlohmann::json parameters() const = 0;
  // Coordinator, while planning: check what depends on a tensor (Input
  // Error naming it), e.g. that a density keeps something.
  virtual void check_tensor(const Inputs& in) const { (void)in; }
  // Float64 values the merge holds per element of a row block besides one
  // row block of raw input and output, and the passes over the inputs it
  // makes (for the estimates).
  virtual std::uint64_t working_values_per_element() const = 0;
  virtual double passes_over_inputs() const { return 1; }
  // Merges float tensor `index` (out: its output description), writing every
  // row through `writer`; rows() and read_rows() give the blocks.
  virtual void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) = 0;

  // Rows per block: a block's working values, raw input and output within
  // the engine's chunk size (one row at least).
  std::uint64_t block_rows(const TensorInfo& out, const Inputs& in) const;
  // Reads rows [first, first + count) of input k (0: the base, i + 1: model
  // i) as float64 into dst (resized to count * elements per row).
  void read_rows(std::size_t k, const Inputs& in, std::uint64_t first, std::uint64_t count, std::vector<double>& dst);
  // Rounds float64 values to the output dtype and writes them as rows [first, first + count).
  void write_rows(std::size_t index, const TensorInfo& out, std::uint64_t first, std::uint64_t count,
                  const std::vector<double>& values, CheckpointWriter& writer);
  // "model 2 (path)" for messages.
  std::string model_name(std::size_t i) const;

  const MergeInputs& inputs() const { return in_; }
  std::size_t model_count() const { return in_.models.size(); }
  std::uint64_t chunk_bytes() const { return chunk_bytes_; }

 private:
  void open_inputs();
  void check_same_tensors(std::size_t i) const;
  Inputs inputs_of(const TensorInfo& out) const;
  std::uint64_t working_row_bytes(const TensorInfo& out, const Inputs& in) const;
  void copy_identical_rows(const Inputs& in, std::uint64_t first, std::uint64_t count);

  std::string label_;
  MergeInputs in_;
  std::uint64_t chunk_bytes_ = 0;  // the engine's (PlanContext)
  std::unique_ptr<CheckpointReader> base_;
  std::vector<std::unique_ptr<CheckpointReader>> models_;
  OutputSpec spec_;
  std::vector<std::byte> raw_, out_;  // one input's raw rows, the output's
};

// Elements per row of a tensor seen as a matrix (0 for an empty tensor).
std::uint64_t row_elements(const TensorInfo& t);

}  // namespace soupkit
