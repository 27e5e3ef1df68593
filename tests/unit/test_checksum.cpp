// The journal's tensor checksum must not depend on how rows were split into
// writes (or across ranks), and must change when any byte or row position does.
#include "soupkit/engine/checksum.hpp"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace soupkit {
namespace {

std::vector<std::byte> random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xFF);
  return v;
}

TEST(Checksum, SumOfBlocksEqualsWhole) {
  constexpr std::uint64_t rows = 37, rb = 53;  // odd sizes: exercise the tails
  const auto data = random_bytes(rows * rb, 1);
  const std::uint64_t whole = checksum_rows(0, rows, rb, data);
  for (std::uint64_t split : {1u, 5u, 36u}) {
    const std::uint64_t a = checksum_rows(0, split, rb, std::span(data).first(split * rb));
    const std::uint64_t b = checksum_rows(split, rows - split, rb, std::span(data).subspan(split * rb));
    EXPECT_EQ(a + b, whole) << "split at row " << split;
  }
}

TEST(Checksum, DetectsAnyFlippedByteAndSwappedRows) {
  constexpr std::uint64_t rows = 4, rb = 70;
  auto data = random_bytes(rows * rb, 2);
  const std::uint64_t whole = checksum_rows(0, rows, rb, data);
  for (std::size_t i = 0; i < data.size(); ++i) {
    data[i] ^= std::byte{0x01};
    EXPECT_NE(checksum_rows(0, rows, rb, data), whole) << "byte " << i;
    data[i] ^= std::byte{0x01};
  }
  std::swap_ranges(data.begin(), data.begin() + rb, data.begin() + rb);
  EXPECT_NE(checksum_rows(0, rows, rb, data), whole);
}

TEST(Checksum, DependsOnRowIndexAndLength) {
  const auto data = random_bytes(64, 3);
  EXPECT_NE(hash_row(0, data), hash_row(1, data));
  EXPECT_NE(hash_row(0, std::span(data).first(63)), hash_row(0, data));
  EXPECT_NE(hash_row(0, {}), hash_row(1, {}));
}

}  // namespace
}  // namespace soupkit
