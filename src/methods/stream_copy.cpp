#include "soupkit/methods/stream_copy.hpp"

#include "soupkit/io/cast.hpp"
#include "soupkit/util/error.hpp"

#include <algorithm>

namespace soupkit {
namespace {

// Rows per range: as many as fit in chunk_bytes, at least one.
std::uint64_t rows_per_range(std::uint64_t row_bytes, std::uint64_t chunk_bytes) {
  return std::max<std::uint64_t>(1, chunk_bytes / std::max<std::uint64_t>(row_bytes, 1));
}

}  // namespace

double stream_copy_peak_bytes(const TensorInfo& have, const TensorInfo& want, std::uint64_t chunk_bytes) {
  const std::uint64_t rows = std::min(row_count(have), rows_per_range(row_bytes(have), chunk_bytes));
  const double in = static_cast<double>(rows * row_bytes(have));
  return have.dtype == want.dtype ? in : in + static_cast<double>(rows * row_bytes(want));
}

void stream_copy(const CheckpointReader& reader, const TensorInfo& have, const TensorInfo& want, std::size_t index,
                 CheckpointWriter& writer, std::uint64_t chunk_bytes, CopyBuffers& buffers) {
  const std::uint64_t rows = row_count(have), in_row = row_bytes(have), out_row = row_bytes(want);
  const std::uint64_t step = rows_per_range(in_row, chunk_bytes);
  for (std::uint64_t first = 0; first < rows || (rows == 0 && first == 0); first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    buffers.in.resize(count * in_row);
    reader.read_rows(have, first, count, buffers.in);
    if (have.dtype == want.dtype) {
      writer.write_rows(index, first, count, buffers.in);
    } else {
      buffers.out.resize(count * out_row);
      cast_elements(have.dtype, want.dtype, buffers.in.data(), count * in_row / dtype_size(have.dtype),
                    buffers.out.data());
      writer.write_rows(index, first, count, buffers.out);
    }
    if (rows == 0) break;
  }
}

void stream_copy_same_name(const CheckpointReader& reader, std::size_t index, CheckpointWriter& writer,
                           std::uint64_t chunk_bytes, CopyBuffers& buffers) {
  const TensorInfo& want = writer.spec().tensors.at(index);
  stream_copy(reader, reader.planned(want.name), want, index, writer, chunk_bytes, buffers);
}

}  // namespace soupkit
