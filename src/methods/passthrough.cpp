// mergekit's `passthrough`: every output tensor is one input tensor, as it
// is, or multiplied by the model's `scale` when given. With mergekit's
// slices it stacks layer ranges of models (a "frankenmerge":
// tensor_merge.cpp plans which input each output layer takes); with the
// models syntax it takes exactly one model. More than one model for a
// tensor is refused, as mergekit refuses it ("Passthrough merge expects
// exactly one tensor"). Integer tensors are copied unscaled.
#include "soupkit/methods/tensor_merge.hpp"
#include "soupkit/util/error.hpp"

namespace soupkit {
namespace {

class PassthroughMethod final : public TensorMerge {
 public:
  using TensorMerge::TensorMerge;

 private:
  std::uint64_t working_values_per_element() const override { return 1; }
  void check_tensor(const Inputs& in, const TensorParameters& p) const override {
    std::size_t count = 0, member = 0;
    for (std::size_t k = 0; k < in.size(); ++k)
      if (in[k]) ++count, member = k;
    SOUPKIT_INPUT_ERROR_IF(count != 1, "passthrough takes each tensor from exactly one model, and {} models give "
                           "'{}' (mergekit: 'Passthrough merge expects exactly one tensor'); list one model, or use "
                           "slices with one source each", count, in[member]->name);
    (void)p;
  }
  void merge_tensor(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer) override {
    const std::size_t m = members(index).front();
    const double scale = parameters(index).per_model[m].number("scale");
    const std::uint64_t rows = row_count(out), step = block_rows(out, in);
    for (std::uint64_t first = 0; first < rows; first += step) {
      const std::uint64_t count = std::min(step, rows - first);
      read_rows(m, in, first, count, values_);
      if (scale != 1)
        for (auto& v : values_) v *= scale;
      write_rows(index, out, first, count, values_, writer);
    }
  }

  std::vector<double> values_;
};

std::unique_ptr<Method> build(const MergeMethodSpec& spec, const MergeInputs& in) {
  return std::make_unique<PassthroughMethod>(spec, in);
}

}  // namespace

MergeMethodSpec passthrough_spec() {
  return {
      .name = "passthrough",
      .merge_methods = {"passthrough"},
      .summary = "passthrough: tensors as they are (scaled), e.g. layer ranges of models stacked with slices",
      .base = BaseRole::None,
      .parameters = {{.name = "scale", .kind = ParameterKind::Number, .default_value = 1.0,
                      .help = "factor applied to the model's floating-point tensors", .per_model = true,
                      .list_option = "scales"}},
      .build = build,
  };
}

}  // namespace soupkit
