// The PyTorch reader's pieces: the strided gather against a naive
// element-by-element reference over random views (transposes, slices,
// broadcasts, permutations), with windows down to one element, and how many
// storage bytes it reads; the unpickler's scalars and sharing.
#include "io/strided_read.hpp"
#include "io/torch_pickle.hpp"
#include "io/torch_state_dict.hpp"

#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>

namespace soupkit::detail {
namespace {

// Rows [first, first + rows) of the view, element by element from its
// definition: element (i0, i1, ...) is storage[offset + sum_k i_k * stride_k].
std::vector<std::byte> naive_rows(const StridedLayout& v, std::size_t es, const std::vector<std::byte>& storage,
                                  std::uint64_t first, std::uint64_t rows) {
  Shape shape = v.shape;
  if (!shape.empty()) shape[0] = rows;
  const std::uint64_t n = std::accumulate(shape.begin(), shape.end(), std::uint64_t{1}, std::multiplies<>());
  std::vector<std::byte> out(n * es);
  for (std::uint64_t flat = 0; flat < n; ++flat) {
    std::uint64_t rest = flat, at = v.offset;
    for (std::size_t k = shape.size(); k-- > 0;) {
      const std::uint64_t i = rest % shape[k] + (k == 0 ? first : 0);
      rest /= shape[k];
      at += i * v.strides[k];
    }
    std::memcpy(out.data() + flat * es, storage.data() + at * es, es);
  }
  return out;
}

struct CountingStorage {
  const std::vector<std::byte>& bytes;
  std::uint64_t bytes_read = 0;
  StorageRead reader() {
    return [this](std::uint64_t offset, std::span<std::byte> dst) {
      ASSERT_LE(offset + dst.size(), bytes.size());
      std::memcpy(dst.data(), bytes.data() + offset, dst.size());
      bytes_read += dst.size();
    };
  }
};

TEST(StridedRead, RandomViewsMatchTheirDefinitionInAnyRowBlocksAndWindow) {
  std::mt19937_64 rng(12345);
  for (int trial = 0; trial < 400; ++trial) {
    const std::size_t es = std::size_t{1} << (rng() % 4);
    const std::size_t dims = rng() % 5;
    StridedLayout v;
    for (std::size_t k = 0; k < dims; ++k) v.shape.push_back(rng() % 6);
    // Strides: a permuted row-major layout of a larger tensor (slices,
    // transposes), sometimes a broadcast (0) or a step.
    std::vector<std::size_t> order(dims);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    v.strides.assign(dims, 0);
    std::uint64_t step = 1 + rng() % 3;
    for (std::size_t k : order) {
      v.strides[k] = rng() % 7 == 0 ? 0 : step;
      step *= v.shape[k] + rng() % 3;
      step = std::max<std::uint64_t>(step, 1);
    }
    v.offset = rng() % 10;
    const auto extent = strided_extent(v);
    ASSERT_TRUE(extent);
    const std::uint64_t numel_storage = std::max<std::uint64_t>(*extent, v.offset) + rng() % 5;
    std::vector<std::byte> storage(numel_storage * es);
    for (auto& b : storage) b = static_cast<std::byte>(rng());
    const std::uint64_t rows_total = v.shape.empty() ? 1 : v.shape[0];
    for (const std::size_t window : {es, 3 * es, std::size_t{64}, kGatherWindowBytes}) {
      for (std::uint64_t block = 1; block <= std::max<std::uint64_t>(rows_total, 1); block += 2) {
        for (std::uint64_t first = 0; first < rows_total; first += block) {
          const std::uint64_t rows = std::min(block, rows_total - first);
          const auto want = naive_rows(v, es, storage, first, rows);
          std::vector<std::byte> got(want.size(), std::byte{0xAA});
          CountingStorage source{storage};
          read_strided_rows(v, es, numel_storage, first, rows, got, source.reader(), window);
          ASSERT_EQ(got, want) << "trial " << trial << " window " << window << " rows [" << first << ", "
                               << first + rows << ")";
        }
      }
    }
  }
}

TEST(StridedRead, ATransposedBlockReadsLittleMoreThanTheStorageItSpans) {
  // A [600, 500] float32 storage viewed transposed: rows [r, r + 10) of the
  // view touch columns r..r+9 of every storage row.
  const std::uint64_t n = 600, m = 500;
  std::vector<std::byte> storage(n * m * 4);
  for (std::size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<std::byte>(i * 7);
  const StridedLayout view{0, {m, n}, {1, m}};
  std::vector<std::byte> got(10 * n * 4);
  CountingStorage source{storage};
  read_strided_rows(view, 4, n * m, 200, 10, got, source.reader(), 64 << 10);
  EXPECT_EQ(got, naive_rows(view, 4, storage, 200, 10));
  const std::uint64_t span = ((n - 1) * m + 210 - 200) * 4;
  EXPECT_LE(source.bytes_read, span + (64 << 10));
  // Contiguous rows are one read of exactly their bytes.
  const StridedLayout rows{3 * m, {n - 3, m}, {m, 1}};
  CountingStorage direct{storage};
  std::vector<std::byte> block(5 * m * 4);
  read_strided_rows(rows, 4, n * m, 7, 5, block, direct.reader());
  EXPECT_EQ(direct.bytes_read, block.size());
  EXPECT_EQ(std::memcmp(block.data(), storage.data() + (3 + 7) * m * 4, block.size()), 0);
}

TEST(StridedRead, ExtentOverflowIsDetected) {
  EXPECT_FALSE(strided_extent({0, {1ull << 40, 1ull << 40}, {1ull << 40, 1}}));
  EXPECT_EQ(strided_extent({5, {0, 7}, {1, 1}}), 0u);
  EXPECT_EQ(strided_extent({5, {}, {}}), 6u);
  EXPECT_EQ(strided_extent({2, {3, 4}, {1, 3}}), 2u + 2 + 9 + 1);
}

TorchPickle unpickle(const std::string& bytes) {
  PickleInput in(std::as_bytes(std::span(bytes)));
  return unpickle_torch(in, "test.pkl");
}

TEST(TorchPickle, ScalarsAndSharedContainers) {
  // PROTO 2, EMPTY_DICT, BINPUT 0, MARK, 'a' -> LONG1 -1, 'b' -> BININT -70000,
  // 'c' -> BINFLOAT 1.5, 'd' -> BINGET 0 (the dict itself), SETITEMS, STOP.
  std::string p("\x80\x02}q\x00(", 6);
  p += std::string("X\x01\x00\x00\x00" "a", 6) + std::string("\x8a\x01\xff", 3);
  p += std::string("X\x01\x00\x00\x00" "b", 6) + "J" + std::string("\x90\xee\xfe\xff", 4);
  p += std::string("X\x01\x00\x00\x00" "c", 6) + "G" + std::string("\x3f\xf8\x00\x00\x00\x00\x00\x00", 8);
  p += std::string("X\x01\x00\x00\x00" "d", 6) + std::string("h\x00", 2);
  p += "u.";
  const TorchPickle result = unpickle(p);
  ASSERT_EQ(result.root.kind, PickleKind::Dict);
  const auto& items = result.objects.dicts[result.root.index];
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].second.kind, PickleKind::Int);
  EXPECT_EQ(items[0].second.integer, -1);
  EXPECT_EQ(items[1].second.integer, -70000);
  EXPECT_EQ(items[2].second.kind, PickleKind::Float);
  EXPECT_EQ(items[2].second.real, 1.5);
  // A cycle through the memo costs nothing: the dict holds itself.
  EXPECT_EQ(items[3].second.kind, PickleKind::Dict);
  EXPECT_EQ(items[3].second.index, result.root.index);
}

TEST(TorchPickle, ErrorsNameTheSourceAndByte) {
  try {
    unpickle(std::string("\x80\x02}cos\nsystem\n.", 16));
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("test.pkl, byte 3: global 'os.system' is not allowed"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace soupkit::detail
