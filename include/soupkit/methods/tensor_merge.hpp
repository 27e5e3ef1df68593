#pragma once
// What mergekit's tensor-by-tensor merge methods share: a list of models
// (one of them perhaps the base), one output tensor per tensor of the
// reference model (the base, or the first model without one), the method's
// parameters resolved for each tensor (gradients over the layer index,
// filters on the name: merge_parameters.hpp, layer_position.hpp),
// integer/bool/fp8 tensors required identical everywhere and copied, and
// floating-point tensors streamed in row blocks, read and widened to
// float64 (first rounded to mergekit's `dtype` when the job sets one) by
// this class. A method (linear, task_arithmetic, ties, ...) says how one
// float tensor is merged (merge_tensor) and what it costs (working values
// per element, passes over the inputs).
#include "soupkit/engine/engine.hpp"
#include "soupkit/methods/layer_position.hpp"
#include "soupkit/methods/method_registry.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace soupkit {

class TensorMerge : public Method {
 public:
  // `spec`: the method's registry entry (its label and parameter table).
  // Throws InputError when there is no model, or when the spec needs a
  // base and none is given.
  TensorMerge(const MergeMethodSpec& spec, const MergeInputs& in);
  std::string name() const override { return label_; }
  MethodPlan plan(const PlanContext& context) final;
  void prepare(const MethodPlan& plan) final;
  nlohmann::json compute(std::size_t index, CheckpointWriter& writer) final;
  AuxSource aux_contents(std::size_t index) final;

 protected:
  // The inputs of one output tensor, one per model of MergeInputs::models
  // (the base among them, at base_index()); null for a model that is not
  // one of its members (only with slices).
  using Inputs = std::vector<const TensorInfo*>;

  // Coordinator, while planning: check what depends on a tensor and its
  // parameters (InputError naming it), e.g. that a density keeps something.
  virtual void check_tensor(const Inputs& in, const TensorParameters& p) const {
    (void)in;
    (void)p;
  }
  // The dtype a floating-point output tensor is written in when the job
  // sets no out_dtype: what mergekit's method returns for inputs rounded to
  // `dtype` (the job's dtype, else the reference model's), which mergekit
  // writes as it is. By default the base's (the task vector methods and
  // slerp cast to it), else `dtype`.
  virtual DType result_dtype(const Inputs& in, DType dtype) const {
    return base_index() && in.at(*base_index()) ? read_dtype(in, *base_index()) : dtype;
  }
  // torch's type promotion over `dtype` and the inputs' float dtypes as read
  // (all the job's dtype when it sets one): what mergekit's arithmetic
  // between them returns (float64 > float32 > float16, bfloat16; float16
  // with bfloat16 is float32).
  DType promoted_dtype(const Inputs& in, DType dtype) const;
  // The dtype model k's tensor is read as (the job's dtype when it sets one).
  DType read_dtype(const Inputs& in, std::size_t k) const;
  // Float64 values the merge holds per element of a row block besides one
  // row block of raw input and output, and the passes over the inputs it
  // makes (for the estimates).
  virtual std::uint64_t working_values_per_element() const = 0;
  virtual double passes_over_inputs() const { return 1; }
  // Bytes the merge of one tensor holds besides its row blocks (state kept
  // over the whole tensor: a selection's candidates, ranks), for the plan's
  // peak estimate.
  virtual std::uint64_t held_bytes(const Inputs& in, const TensorParameters& p) const {
    (void)in;
    (void)p;
    return 0;
  }
  // Bytes the merge of float tensor `out` holds besides its row blocks (a
  // whole-tensor statistic's search state, per-row statistics kept between
  // passes), for the plan's peak estimate; chunk_bytes() is set.
  virtual std::uint64_t statistic_bytes(const TensorInfo& out) const {
    (void)out;
    return 0;
  }
  // Merges float tensor `index` (out: its output description), writing every
  // row through `writer`; rows(), block_rows() and read_rows() give the
  // blocks, parameters(index) its parameters.
  virtual void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) = 0;

  // The parameters of output tensor `index`.
  const TensorParameters& parameters(std::size_t index) const { return tensor_parameters_.at(index); }
  // The models output tensor `index` is made from, in model order: every
  // model, except with mergekit's slices (each slice has its own sources).
  const std::vector<std::size_t>& members(std::size_t index) const { return sources_.at(index).members; }
  // Rows per block: a block's working values, raw input and output within
  // the engine's chunk size (one row at least).
  std::uint64_t block_rows(const TensorInfo& out, const Inputs& in) const;
  // Reads rows [first, first + count) of model k's tensor as float64 into
  // dst (resized to count * elements per row), rounded to the compute dtype
  // first when the job sets one.
  void read_rows(std::size_t k, const Inputs& in, std::uint64_t first, std::uint64_t count, std::vector<double>& dst);
  // The same rows of model k's task vector: read_rows minus `base`, the
  // base's rows as read_rows gave them.
  void read_task_vector_rows(std::size_t k, const Inputs& in, std::uint64_t first, std::uint64_t count,
                             const std::vector<double>& base, std::vector<double>& dst);
  // Rounds float64 values to the output dtype and writes them as rows [first, first + count).
  void write_rows(std::size_t index, const TensorInfo& out, std::uint64_t first, std::uint64_t count,
                  const std::vector<double>& values, CheckpointWriter& writer);
  // "models[2] (path)" for messages.
  std::string model_name(std::size_t i) const { return in_.parameters.model_names.at(i); }

  const MergeInputs& inputs() const { return in_; }
  std::size_t model_count() const { return in_.models.size(); }
  std::optional<std::size_t> base_index() const { return in_.base(); }
  // The models other than the base, in order: the task vectors' models.
  std::vector<std::size_t> non_base_models() const;
  std::uint64_t chunk_bytes() const { return chunk_bytes_; }

 private:
  // Where an output tensor comes from.
  struct TensorSource {
    TensorInfo out;                                 // its name, shape and (input) dtype
    std::vector<std::optional<std::string>> names;  // its name in each model (none: not a member)
    std::vector<std::size_t> members;               // the models with a name
    double t = 0;                                   // its layer position (mergekit's gradients)
    std::size_t slice = 0;                          // with slices: the slice whose parameters it takes
  };
  MethodPlan plan_tensors(const PlanContext& context);
  // Every output tensor's sources: the reference's tensors (models), or the
  // slices' layers stacked (slices).
  void plan_sources();
  void plan_slice_sources();
  void check_member(const TensorSource& source, std::size_t k) const;
  void open_inputs();
  std::size_t reference() const { return base_index().value_or(0); }
  void check_same_tensors(std::size_t i) const;
  void resolve_all_parameters();
  Inputs inputs_of(std::size_t index) const;
  std::uint64_t working_row_bytes(const TensorInfo& out, const Inputs& in) const;
  void copy_identical_rows(std::size_t index, const Inputs& in, std::uint64_t first, std::uint64_t count);

  std::string label_;
  const MergeMethodSpec& spec_entry_;
  MergeInputs in_;
  std::uint64_t chunk_bytes_ = 0;  // the engine's (PlanContext)
  std::vector<std::unique_ptr<CheckpointReader>> models_;
  std::vector<TensorSource> sources_;                // per output tensor
  std::vector<TensorParameters> tensor_parameters_;  // per output tensor
  OutputSpec spec_;
  std::map<std::string, std::string> made_files_;  // aux files soupkit writes (model card, ...), by name
  std::vector<std::byte> raw_, out_;  // one input's raw rows, the output's
};

// Elements per row of a tensor seen as a matrix (0 for an empty tensor).
std::uint64_t row_elements(const TensorInfo& t);
// Elements of one vector along the last axis, where a method reduces over
// dim -1 (a softmax, a norm per row): shape.back() for two dimensions or
// more (each row holds whole vectors), numel for one or none (the tensor is
// one vector, which may span row blocks).
std::uint64_t last_axis_elements(const TensorInfo& t);

}  // namespace soupkit
