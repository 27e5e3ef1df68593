#pragma once
// What mergekit's merges around a required base model share (model_stock,
// nearswap, arcee_fusion): every tensor must come from the base (mergekit
// fails otherwise: "Base model tensor not found"); its other models are its
// members but the base, in model order; and when there is none, mergekit
// returns the base's tensor, as write_base does.
#include "soupkit/methods/tensor_merge.hpp"

#include <vector>

namespace soupkit {

class BaseModelMerge : public TensorMerge {
 public:
  using TensorMerge::TensorMerge;

 protected:
  // The models besides the base that give this tensor, in model order.
  // InputError naming the tensor when the base does not give it (slices).
  std::vector<std::size_t> others(const Inputs& in) const;
  // The base's tensor, rounded to the output dtype, as the output.
  void write_base(std::size_t index, const Inputs& in, const TensorInfo& out, CheckpointWriter& writer);

 private:
  std::vector<double> values_;
};

}  // namespace soupkit
