#pragma once
// Reading a strided view of a storage (a PyTorch tensor: storage offset,
// sizes and strides in elements) as the row-major tensor it shows, row
// block by row block, with bounded memory: a contiguous block is one read;
// any other (a transpose, a slice, a tensor sharing its storage) is gathered
// through its strides from a window of the storage at most
// kGatherWindowBytes large.
#include "soupkit/io/tensor.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

namespace soupkit::detail {

inline constexpr std::size_t kGatherWindowBytes = 1u << 20;

struct StridedLayout {
  std::uint64_t offset = 0;            // first element, in elements of the storage
  Shape shape;                         // sizes
  std::vector<std::uint64_t> strides;  // in elements, parallel to shape
};

// One past the highest storage element the view touches (0 for a view with
// no elements), or nullopt if that does not fit in 64 bits.
std::optional<std::uint64_t> strided_extent(const StridedLayout& layout);

// Reads `dst.size()` bytes at a byte offset of the storage.
using StorageRead = std::function<void(std::uint64_t byte_offset, std::span<std::byte> dst)>;

// Rows [first_row, first_row + rows) of the view (seen as a matrix
// [shape[0], rest]; a 0-d view has one row) into dst, row-major, as
// torch's tensor.contiguous() holds them. The caller has checked the view
// against the storage (strided_extent <= storage_numel) and the row range
// and dst's size against the shape. Storage bytes are read at most once per
// window for views that walk their storage forward (any view without
// overlapping elements), and never more than the span the rows touch plus
// one window.
void read_strided_rows(const StridedLayout& layout, std::size_t element_size, std::uint64_t storage_numel,
                       std::uint64_t first_row, std::uint64_t rows, std::span<std::byte> dst, const StorageRead& read,
                       std::size_t window_bytes = kGatherWindowBytes);

}  // namespace soupkit::detail
