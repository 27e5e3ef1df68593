// File reads, carried-file names and the limits on reading carried files.
#include "soupkit/io/checkpoint.hpp"
#include "soupkit/util/error.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>

namespace soupkit {
namespace {

class TempDirTest : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/soupkit-unit-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

using FileTest = TempDirTest;

TEST_F(FileTest, TruncationMessageGivesTheRealEndOfFile) {
  const fs::path p = dir_ / "ten.bin";
  write_text_file(p, "0123456789");
  std::byte buffer[4];
  const File f = File::open_read(p);
  // Starting past the end and ending past it: the file ends at 10 either way.
  for (const std::uint64_t offset : {100ull, 8ull}) {
    const std::string message = error_of([&] { f.pread_exact(offset, buffer); });
    EXPECT_NE(message.find("ten.bin"), std::string::npos) << message;
    EXPECT_NE(message.find(fmt::format("at offset {}, file ends at 10)", offset)), std::string::npos) << message;
  }
}

TEST(AuxFileNames, PlainNamesAreAcceptedAndEverythingElseRefusedNamingTheSource) {
  for (const std::string good : {"config.json", "tokenizer.json", "README.md", "merges.txt", "a b", ".hidden"})
    EXPECT_NO_THROW(check_aux_file_name(good, "in.h5: /files/x")) << good;
  const std::vector<std::string> bad_names = {"",
                                              ".",
                                              "..",
                                              "../x",
                                              "/tmp/x",
                                              "a/b",
                                              "model.safetensors",
                                              "model-00001-of-00003.safetensors",
                                              "model.safetensors.index.json",
                                              "weights.bin",
                                              "w.h5",
                                              "x.partial",
                                              std::string("a\0b", 3),
                                              "a\nb",
                                              std::string(256, 'a')};
  for (const std::string& bad : bad_names) {
    const std::string message = error_of([&] { check_aux_file_name(bad, "in.h5: /files/x"); });
    EXPECT_NE(message.find("in.h5: /files/x: carried file name"), std::string::npos) << printable(bad) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line";
    EXPECT_EQ(message.find('\0'), std::string::npos) << "not cut at a NUL";
  }
  const std::string twice =
      error_of([] { check_aux_files({{"config.json", 1}, {"vocab.txt", 2}, {"config.json", 3}}, "in.h5"); });
  EXPECT_NE(twice.find("'config.json' appears twice"), std::string::npos) << twice;
}

TEST(Printable, EscapesControlCharactersOnly) {
  EXPECT_EQ(printable("layer.0/w"), "layer.0/w");
  EXPECT_EQ(printable(std::string("w\0", 2)), "w\\x00");
  EXPECT_EQ(printable("a\nb\x1b"), "a\\x0ab\\x1b");
}

using AuxReadTest = TempDirTest;

// A carried file that is parsed is read whole, so its size is capped; the
// check comes before the allocation (the file here is sparse: no data).
TEST_F(AuxReadTest, ParsedCarriedFileAboveTheCapIsRefusedNamingIt) {
  const fs::path model = dir_ / "model";
  fs::create_directory(model);
  // An empty safetensors file: header "{}" padded to 8 bytes.
  write_text_file(model / "model.safetensors", std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  write_text_file(model / "tokenizer.json", "{}");
  File::open_write(model / "tokenizer.json", false).truncate(kMaxParsedAuxBytes + 1);
  const auto reader = open_checkpoint(model);
  const std::string message = error_of([&] { reader->read_aux("tokenizer.json"); });
  EXPECT_NE(message.find("'tokenizer.json'"), std::string::npos) << message;
  EXPECT_NE(message.find("256 MiB"), std::string::npos) << message;
  // Streaming it is fine: one block from the middle.
  std::byte block[16];
  reader->read_aux_block("tokenizer.json", 1ull << 20, block);
  EXPECT_EQ(block[0], std::byte{0});
}

}  // namespace
}  // namespace soupkit
