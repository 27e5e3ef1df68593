#include "soupkit/io/dtype.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <utility>

namespace soupkit {
namespace {

struct DTypeEntry {
  DType type;
  std::string_view name;
  std::size_t size;
};

constexpr std::array<DTypeEntry, 15> kDTypes{{
    {DType::F64, "F64", 8},     {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},   {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::I64, "I64", 8},     {DType::I32, "I32", 4},         {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},       {DType::U64, "U64", 8},         {DType::U32, "U32", 4},
    {DType::U16, "U16", 2},     {DType::U8, "U8", 1},           {DType::BOOL, "BOOL", 1},
}};

const DTypeEntry& entry(DType t) {
  return kDTypes[static_cast<std::size_t>(t)];
}

}  // namespace

std::size_t dtype_size(DType t) { return entry(t).size; }
std::string_view dtype_name(DType t) { return entry(t).name; }

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& e : kDTypes)
    if (e.name == name) return e.type;
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  static const std::pair<std::string_view, DType> aliases[] = {
      {"f64", DType::F64},      {"float64", DType::F64},   {"fp64", DType::F64},  {"double", DType::F64},
      {"f32", DType::F32},      {"float32", DType::F32},   {"fp32", DType::F32},  {"float", DType::F32},
      {"f16", DType::F16},      {"float16", DType::F16},   {"fp16", DType::F16},  {"half", DType::F16},
      {"bf16", DType::BF16},    {"bfloat16", DType::BF16},
  };
  for (const auto& [alias, type] : aliases)
    if (alias == lower) return type;
  return std::nullopt;
}

bool is_float_arith(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

static_assert(static_cast<std::size_t>(DType::BOOL) + 1 == kDTypes.size());

}  // namespace soupkit
