#pragma once
// Copies one tensor from a reader to a writer row range by row range, so
// memory stays bounded whatever the tensor size; casts floating-point
// elements when the output dtype differs (round to nearest even).
#include "soupkit/io/checkpoint.hpp"

#include <vector>

namespace soupkit {

struct CopyBuffers {
  std::vector<std::byte> in, out;  // reused from tensor to tensor
};

// Writes tensor `have` of `reader` as output tensor `index` (described by
// `want`, same shape) in row ranges of at most `chunk_bytes`.
void stream_copy(const CheckpointReader& reader, const TensorInfo& have, const TensorInfo& want, std::size_t index,
                 CheckpointWriter& writer, std::uint64_t chunk_bytes, CopyBuffers& buffers);

// The peak bytes stream_copy holds for it: one row range of input (at
// least a row), and one of output when it casts.
double stream_copy_peak_bytes(const TensorInfo& have, const TensorInfo& want, std::uint64_t chunk_bytes);

// The same for output tensor `index` of the writer's spec, taken from the
// reader's tensor of the same name (which planning found there).
void stream_copy_same_name(const CheckpointReader& reader, std::size_t index, CheckpointWriter& writer,
                           std::uint64_t chunk_bytes, CopyBuffers& buffers);

}  // namespace soupkit
