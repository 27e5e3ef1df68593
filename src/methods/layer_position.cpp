#include "soupkit/methods/layer_position.hpp"

#include <algorithm>
#include <array>
#include <charconv>

namespace soupkit {

std::optional<LayerName> parse_layer_name(std::string_view name) {
  static constexpr std::array<std::string_view, 5> kStacks = {"layers", "h", "layer", "blocks", "block"};
  // Components separated by dots; the first "<stack>.<digits>." wins.
  std::size_t start = 0;
  while (start < name.size()) {
    const std::size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) break;
    const std::string_view component = name.substr(start, dot - start);
    if (std::find(kStacks.begin(), kStacks.end(), component) != kStacks.end()) {
      const std::size_t digits = dot + 1, end = name.find('.', digits);
      if (end != std::string_view::npos && end > digits) {
        const std::string_view number = name.substr(digits, end - digits);
        std::uint64_t index = 0;
        const auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), index);
        // Plain decimal digits only ("01" would be a second name for layer 1).
        if (ec == std::errc() && ptr == number.data() + number.size() && (number.size() == 1 || number[0] != '0'))
          return LayerName{std::string(name.substr(0, digits)), index, std::string(name.substr(end))};
      }
    }
    start = dot + 1;
  }
  return std::nullopt;
}

LayerPositions::LayerPositions(const std::vector<TensorInfo>& tensors) {
  for (const auto& t : tensors)
    if (const auto layer = parse_layer_name(t.name)) {
      auto& count = layers_[layer->prefix];
      count = std::max(count, layer->index + 1);
    }
}

std::uint64_t LayerPositions::layer_count(std::string_view prefix) const {
  const auto it = layers_.find(prefix);
  return it == layers_.end() ? 0 : it->second;
}

double LayerPositions::t(std::string_view name) const {
  const auto layer = parse_layer_name(name);
  if (!layer) return 0;
  const std::uint64_t count = layer_count(layer->prefix);
  if (count <= 1) return 1;
  return static_cast<double>(layer->index) / static_cast<double>(count - 1);
}

}  // namespace soupkit
