#pragma once
// Element types of checkpoint tensors, named as in the safetensors format.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace soupkit {

enum class DType : std::uint8_t {
  F64, F32, F16, BF16, F8_E4M3, F8_E5M2,
  I64, I32, I16, I8, U64, U32, U16, U8, BOOL,
};

// Bytes per element.
std::size_t dtype_size(DType t);
// The safetensors spelling ("F32", "BF16", ...).
std::string_view dtype_name(DType t);
// Parses a safetensors dtype name; also accepts lower-case and common aliases
// (float32, fp16, bfloat16, ...) so the CLI can share it.
std::optional<DType> parse_dtype(std::string_view name);
// Types soupkit does arithmetic on (F64, F32, F16, BF16). Everything else
// (integers, bool, fp8) is carried through unchanged.
bool is_float_arith(DType t);

}  // namespace soupkit
