// safetensors header validation, sizes, dtype names, owner assignment.
#include "soupkit/engine/engine.hpp"
#include "soupkit/util/error.hpp"
#include "soupkit/io/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstdlib>

namespace soupkit {
namespace {

class SafetensorsHeaderTest : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/soupkit-unit-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a file with the given JSON header and `data_bytes` bytes of data.
  fs::path write(const std::string& json, std::size_t data_bytes, std::uint64_t claimed_len = 0) {
    const fs::path p = dir_ / "t.safetensors";
    std::string blob(8, '\0');
    const std::uint64_t len = claimed_len ? claimed_len : json.size();
    for (int i = 0; i < 8; ++i) blob[i] = static_cast<char>((len >> (8 * i)) & 0xff);
    blob += json;
    blob.append(data_bytes, '\x01');
    write_text_file(p, blob);
    return p;
  }

  std::string error_of(const fs::path& p) {
    try {
      read_safetensors_header(File::open_read(p));
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
};

TEST_F(SafetensorsHeaderTest, ReadsAValidHeader) {
  const auto p = write(R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},)"
                       R"("a":{"dtype":"BF16","shape":[],"data_offsets":[0,2]}})",
                       10);
  const auto h = read_safetensors_header(File::open_read(p));
  ASSERT_EQ(h.entries.size(), 2u);
  EXPECT_EQ(h.entries[0].info.name, "a");  // in data order
  EXPECT_EQ(h.entries[1].info.shape, Shape{2});
  EXPECT_EQ(h.metadata.at("format"), "pt");
}

TEST_F(SafetensorsHeaderTest, RejectsEachKindOfCorruptionNamingFileAndTensor) {
  struct Case {
    std::string json;
    std::size_t data;
    std::string expect;
  } cases[] = {
      {R"({"w":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}})", 4, "unknown dtype"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4, "needs 8"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", 4, "past the end"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"v":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})", 6, "overlaps"},
      {R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, "non-negative"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8, "holes"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 6, "after the last tensor"},
      {R"({"w":{"dtype":"F32","shape":[1]})", 4, "not valid JSON"},
      {R"([1,2])", 0, "not a JSON object"},
      {R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})", 4, "too large"},
  };
  for (const auto& c : cases) {
    const auto msg = error_of(write(c.json, c.data));
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.json << " -> " << msg;
    EXPECT_NE(msg.find("t.safetensors"), std::string::npos) << msg;
  }
  EXPECT_NE(error_of(write("{}", 0, 1000)).find("larger than the file"), std::string::npos);
  EXPECT_NE(error_of(write(R"({"my.tensor":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}})", 4)).find("my.tensor"),
            std::string::npos);
}

TEST_F(SafetensorsHeaderTest, LayoutPadsTheHeaderAndReadsBack) {
  const std::vector<TensorInfo> tensors = {{"x", DType::F32, {3}}, {"y", DType::U8, {5}}};
  const auto layout = layout_safetensors(tensors, {{"k", "v"}});
  EXPECT_EQ(layout.header.size() % 8, 0u);
  EXPECT_EQ(layout.offsets[0], layout.header.size());
  EXPECT_EQ(layout.offsets[1], layout.header.size() + 12);
  std::string blob = layout.header;
  blob.resize(layout.file_size, '\0');
  const fs::path p = dir_ / "l.safetensors";
  write_text_file(p, blob);
  const auto h = read_safetensors_header(File::open_read(p));
  EXPECT_EQ(h.entries[0].info, tensors[0]);
  EXPECT_EQ(h.entries[1].file_offset, layout.offsets[1]);
}

TEST(Sizes, ParseSizeUnderstandsUnits) {
  EXPECT_EQ(parse_size("5GB"), 5'000'000'000ull);
  EXPECT_EQ(parse_size("500MiB"), 500ull << 20);
  EXPECT_EQ(parse_size("1024"), 1024u);
  EXPECT_EQ(parse_size("1.5 KiB"), 1536u);
  EXPECT_FALSE(parse_size("lots"));
  EXPECT_FALSE(parse_size("5XB"));
}

TEST(DTypes, NamesAndAliases) {
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_EQ(parse_dtype("bfloat16"), DType::BF16);
  EXPECT_EQ(parse_dtype("fp16"), DType::F16);
  EXPECT_FALSE(parse_dtype("F7"));
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_name(DType::F8_E4M3), "F8_E4M3");
  EXPECT_FALSE(is_float_arith(DType::I64));
}

TEST(Owners, LargestFirstOntoTheLeastLoadedRank) {
  const auto owner = assign_owners({1, 10, 3, 7, 2}, 2);
  // 10 -> r0, 7 -> r1, 3 -> r1 (7<10), 2 -> r0 (10<10? no: r0=10, r1=10 -> r0), 1 -> r1.
  EXPECT_EQ(owner, (std::vector<int>{1, 0, 1, 1, 0}));
  double load[2] = {0, 0};
  const std::vector<double> costs = {5, 5, 5, 5, 4, 4, 3, 3, 3};
  const auto o = assign_owners(costs, 2);
  for (std::size_t i = 0; i < costs.size(); ++i) load[o[i]] += costs[i];
  EXPECT_LE(std::abs(load[0] - load[1]), 5.0);
}

}  // namespace
}  // namespace soupkit
