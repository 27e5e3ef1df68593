#include "soupkit/io/tensor.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <cmath>
#include <utility>

namespace soupkit {

std::optional<std::uint64_t> checked_numel(const Shape& shape) {
  std::uint64_t n = 1;
  for (auto d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return std::nullopt;
  return n;
}

std::uint64_t TensorInfo::numel() const { return checked_numel(shape).value_or(0); }
std::uint64_t TensorInfo::nbytes() const { return numel() * dtype_size(dtype); }

std::string shape_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::string human_bytes(std::uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

std::optional<std::uint64_t> parse_size(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  if (i == 0) return std::nullopt;
  double value = 0;
  try {
    value = std::stod(text.substr(0, i));
  } catch (...) {
    return std::nullopt;
  }
  std::string unit;
  for (char c : text.substr(i))
    if (!std::isspace(static_cast<unsigned char>(c))) unit += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, double> units[] = {
      {"", 1.0},        {"B", 1.0},
      {"K", 1e3},       {"KB", 1e3},         {"KIB", 1024.0},
      {"M", 1e6},       {"MB", 1e6},         {"MIB", 1048576.0},
      {"G", 1e9},       {"GB", 1e9},         {"GIB", 1073741824.0},
      {"T", 1e12},      {"TB", 1e12},        {"TIB", 1099511627776.0},
  };
  for (const auto& [name, factor] : units)
    if (unit == name) {
      const double bytes = std::floor(value * factor);
      if (!(bytes >= 0 && bytes < 1.8e19)) return std::nullopt;
      return static_cast<std::uint64_t>(bytes);
    }
  return std::nullopt;
}

}  // namespace soupkit
