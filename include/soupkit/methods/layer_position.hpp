#pragma once
// Where a tensor sits in the model's stack of layers, as mergekit's
// gradients see it. mergekit walks the architecture: each layer i of a
// stack of L gets t = i / (L - 1) (t = 1 when L = 1), and every tensor
// outside the layers (embeddings, final norm, head) gets t = 0
// (mergekit/plan.py: plan_slice, plan_module). soupkit knows no
// architectures; it reads the layer index from the tensor's name: the
// number after a component named `layers`, `h`, `layer`, `blocks` or
// `block` ("model.layers.12.mlp.up_proj.weight", "transformer.h.3.attn.c_attn.weight",
// "encoder.layer.0.output.dense.bias"), and L from the largest index of
// that stack (the same prefix) plus one.
#include "soupkit/io/tensor.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace soupkit {

struct LayerName {
  std::string prefix;   // up to and including the stack's name and its dot: "model.layers."
  std::uint64_t index;  // 12
  std::string suffix;   // from the dot after the index: ".mlp.up_proj.weight"
};

// The layer a tensor name belongs to, or none.
std::optional<LayerName> parse_layer_name(std::string_view name);

class LayerPositions {
 public:
  explicit LayerPositions(const std::vector<TensorInfo>& tensors);
  // mergekit's t for the tensor named `name`.
  double t(std::string_view name) const;
  // Layers in the stack `prefix` (0 when there is none).
  std::uint64_t layer_count(std::string_view prefix) const;

 private:
  std::map<std::string, std::uint64_t, std::less<>> layers_;  // by prefix
};

}  // namespace soupkit
