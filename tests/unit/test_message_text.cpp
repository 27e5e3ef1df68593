// Input text quoted into messages stays one short, complete line.
#include "soupkit/util/message_text.hpp"

#include <gtest/gtest.h>

namespace soupkit {
namespace {

TEST(MessageText, ShortTextIsUnchanged) { EXPECT_EQ(excerpt("model.embed_tokens.weight"), "model.embed_tokens.weight"); }

TEST(MessageText, ControlCharactersAndNulAreShown) {
  EXPECT_EQ(excerpt(std::string("w\0x\n\x7f", 5)), "w\\x00x\\x0a\\x7f");
}

TEST(MessageText, LongTextIsCutAndSaysHowLong) {
  EXPECT_EQ(excerpt(std::string(1'000'000, 'a'), 4), "aaaa... (1000000 bytes)");
  EXPECT_EQ(excerpt(std::string(kMaxQuotedChars, 'a')), std::string(kMaxQuotedChars, 'a'));
}

TEST(MessageText, JsonValuesAreCompactAndCut) {
  EXPECT_EQ(json_excerpt(nlohmann::json::parse(R"({"a": [1, 2]})")), R"({"a":[1,2]})");
  EXPECT_EQ(json_excerpt(nlohmann::json(std::vector<int>(100000, 7)), 6), "[7,7,7... (200001 bytes)");
  // Invalid UTF-8 (possible in names read from HDF5) is replaced, not thrown about.
  EXPECT_NO_THROW(json_excerpt(nlohmann::json(std::string("\xff\xfe"))));
}

TEST(MessageText, Utf8Validity) {
  EXPECT_TRUE(is_valid_utf8("layer.0/w \xE2\x96\x81 \xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xFF"));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));      // a surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xE2\x96"));          // cut short
  // Quoted into a message, bytes that are not UTF-8 become escapes and
  // well-formed characters stay.
  EXPECT_EQ(excerpt("caf\xe9 \xE2\x96\x81"), "caf\\xe9 \xE2\x96\x81");
}

}  // namespace
}  // namespace soupkit
