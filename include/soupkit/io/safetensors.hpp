#pragma once
// The safetensors file format: an 8-byte little-endian header length N, N
// bytes of JSON describing every tensor, then the data buffer.
#include "soupkit/io/file.hpp"
#include "soupkit/io/tensor.hpp"

#include <map>
#include <string>
#include <vector>

namespace soupkit {

using StringMap = std::map<std::string, std::string>;

struct SafetensorsEntry {
  TensorInfo info;
  std::uint64_t file_offset = 0;  // absolute offset of the first data byte
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in data-offset order
  StringMap metadata;                     // "__metadata__"
};

// Reads and validates the header of an open safetensors file: sizes, JSON,
// dtypes, shapes, offsets in range, consistent with shape x dtype, not
// overlapping and covering the whole buffer (as the format requires).
// Throws InputError naming the file and the tensor.
SafetensorsHeader read_safetensors_header(const File& file);

// Lays out tensors in one file: returns the complete padded header bytes
// (length prefix included) and each tensor's absolute data offset, in the
// order given. Tensors should already be ordered by decreasing alignment.
struct SafetensorsLayout {
  std::string header;                  // 8-byte length + JSON padded to 8 bytes
  std::vector<std::uint64_t> offsets;  // absolute file offsets, parallel to the input
  std::uint64_t file_size = 0;
};
SafetensorsLayout layout_safetensors(const std::vector<TensorInfo>& tensors, const StringMap& metadata);

}  // namespace soupkit
