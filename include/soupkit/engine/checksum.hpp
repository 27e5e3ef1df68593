#pragma once
// Checksums of written tensors, for the resume journal. A tensor's checksum
// is the sum (mod 2^64) of a 64-bit hash of each row together with its row
// index, so it does not depend on how the rows were split into writes or
// which ranks wrote them: ranks add up their parts, and a re-read of the
// finished tensor in any block size gives the same number.
#include "soupkit/io/checkpoint.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <unordered_map>

namespace soupkit {

// 64-bit hash of one row's bytes, seeded with its row index.
std::uint64_t hash_row(std::uint64_t row_index, std::span<const std::byte> bytes);

// Sum of hash_row over rows [first_row, first_row + rows) stored back to
// back in `data` (row_bytes each).
std::uint64_t checksum_rows(std::uint64_t first_row, std::uint64_t rows, std::uint64_t row_bytes,
                            std::span<const std::byte> data);

// This rank's checksums of the rows it writes through `writer`, per tensor,
// kept by observing the writer for as long as this object lives. The
// writer has one observer: `on_rows`, if given, is told of every write too
// (the engine's progress inside a tensor).
class WrittenChecksums {
 public:
  using OnRows = std::function<void(std::size_t index, std::uint64_t rows)>;
  explicit WrittenChecksums(CheckpointWriter& writer, OnRows on_rows = {});
  ~WrittenChecksums();
  WrittenChecksums(const WrittenChecksums&) = delete;
  WrittenChecksums& operator=(const WrittenChecksums&) = delete;
  // The checksum of the rows of tensor `index` written since the last call
  // (then reset to zero). Ranks that wrote parts of a tensor sum theirs.
  std::uint64_t take(std::size_t index);

 private:
  CheckpointWriter& writer_;
  OnRows on_rows_;
  std::unordered_map<std::size_t, std::uint64_t> sums_;
};

// Reads tensor `index` back from the writer's partial output, in blocks, and
// returns the checksum of all its rows (--resume compares it with the journal).
std::uint64_t checksum_written(CheckpointWriter& writer, std::size_t index);

}  // namespace soupkit
