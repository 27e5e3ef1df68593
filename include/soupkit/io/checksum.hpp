#pragma once
// Checksums of written tensors, for the resume journal. A tensor's checksum
// is the sum (mod 2^64) of a 64-bit hash of each row together with its row
// index, so it does not depend on how the rows were split into writes or
// which ranks wrote them: ranks add up their parts, and a re-read of the
// finished tensor in any block size gives the same number.
#include <cstddef>
#include <cstdint>
#include <span>

namespace soupkit {

// 64-bit hash of one row's bytes, seeded with its row index.
std::uint64_t hash_row(std::uint64_t row_index, std::span<const std::byte> bytes);

// Sum of hash_row over rows [first_row, first_row + rows) stored back to
// back in `data` (row_bytes each).
std::uint64_t checksum_rows(std::uint64_t first_row, std::uint64_t rows, std::uint64_t row_bytes,
                            std::span<const std::byte> data);

}  // namespace soupkit
