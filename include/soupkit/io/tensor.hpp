#pragma once
// Description of one tensor: name, element type, shape.
#include "soupkit/io/dtype.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace soupkit {

using Shape = std::vector<std::uint64_t>;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;

  std::uint64_t numel() const;   // product of the shape (1 for a 0-d scalar)
  std::uint64_t nbytes() const;  // numel() * dtype_size(dtype)
  bool operator==(const TensorInfo&) const = default;
};

// Product of the dims, or nullopt if it overflows 64 bits.
std::optional<std::uint64_t> checked_numel(const Shape& shape);
// "[768, 3072]" (and "[]" for a scalar).
std::string shape_string(const Shape& shape);
// "1.50 GiB"-style human size.
std::string human_bytes(std::uint64_t bytes);
// Parses "5GB", "500MiB", "1024" into bytes; nullopt if malformed.
std::optional<std::uint64_t> parse_size(const std::string& text);

}  // namespace soupkit
