#include "soupkit/engine/checksum.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

namespace soupkit {
namespace {

// Multiply-rotate mixing in the style of xxHash64: several GB/s, so the
// journal's checksums cost little next to the write itself. Not
// cryptographic: it catches torn and stale data, not tampering.
constexpr std::uint64_t kPrime1 = 0x9E3779B185EBCA87ull;
constexpr std::uint64_t kPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr std::uint64_t kPrime3 = 0x165667B19E3779F9ull;

std::uint64_t finalize(std::uint64_t h) {
  h ^= h >> 33;
  h *= kPrime2;
  h ^= h >> 29;
  h *= kPrime3;
  h ^= h >> 32;
  return h;
}

}  // namespace

std::uint64_t hash_row(std::uint64_t row_index, std::span<const std::byte> bytes) {
  std::uint64_t lanes[4] = {kPrime1 ^ row_index, kPrime2 + row_index, kPrime3 - row_index, row_index * kPrime1};
  const std::byte* p = bytes.data();
  std::size_t left = bytes.size();
  // Four independent lanes keep the multiplier busy.
  for (; left >= 32; left -= 32, p += 32)
    for (auto& lane : lanes) {
      std::uint64_t w;
      std::memcpy(&w, p + 8 * (&lane - lanes), 8);
      lane = std::rotl(lane + w * kPrime2, 31) * kPrime1;
    }
  std::uint64_t h = std::rotl(lanes[0], 1) + std::rotl(lanes[1], 7) + std::rotl(lanes[2], 12) + std::rotl(lanes[3], 18);
  h += bytes.size();
  for (; left >= 8; left -= 8, p += 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = std::rotl(h ^ (std::rotl(w * kPrime2, 31) * kPrime1), 27) * kPrime1 + kPrime3;
  }
  for (; left > 0; --left, ++p) h = std::rotl(h ^ (static_cast<std::uint64_t>(*p) * kPrime3), 11) * kPrime1;
  return finalize(h);
}

std::uint64_t checksum_rows(std::uint64_t first_row, std::uint64_t rows, std::uint64_t row_bytes,
                            std::span<const std::byte> data) {
  std::uint64_t sum = 0;
  for (std::uint64_t r = 0; r < rows; ++r) sum += hash_row(first_row + r, data.subspan(r * row_bytes, row_bytes));
  return sum;
}

WrittenChecksums::WrittenChecksums(CheckpointWriter& writer, OnRows on_rows)
    : writer_(writer), on_rows_(std::move(on_rows)) {
  writer_.observe_rows([this](std::size_t index, std::uint64_t first_row, std::uint64_t rows,
                              std::span<const std::byte> data) {
    sums_[index] += checksum_rows(first_row, rows, row_bytes(writer_.spec().tensors.at(index)), data);
    if (on_rows_) on_rows_(index, rows);
  });
}

WrittenChecksums::~WrittenChecksums() { writer_.observe_rows(nullptr); }

std::uint64_t WrittenChecksums::take(std::size_t index) {
  const auto it = sums_.find(index);
  if (it == sums_.end()) return 0;
  const std::uint64_t sum = it->second;
  sums_.erase(it);
  return sum;
}

std::uint64_t checksum_written(CheckpointWriter& writer, std::size_t index) {
  // Blocks of rows of about 64 MiB, so verifying a large tensor stays cheap in memory.
  constexpr std::uint64_t kBlockBytes = 64ull << 20;
  const TensorInfo& t = writer.spec().tensors.at(index);
  const std::uint64_t rows = row_count(t), rb = row_bytes(t);
  if (rb == 0) return 0;
  const std::uint64_t step = std::max<std::uint64_t>(1, kBlockBytes / rb);
  std::vector<std::byte> buffer;
  std::uint64_t sum = 0;
  for (std::uint64_t first = 0; first < rows; first += step) {
    const std::uint64_t count = std::min(step, rows - first);
    buffer.resize(count * rb);
    writer.read_written_rows(index, first, count, buffer);
    sum += checksum_rows(first, count, rb, buffer);
  }
  return sum;
}

}  // namespace soupkit
