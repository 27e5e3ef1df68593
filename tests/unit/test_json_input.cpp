#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

std::string nested_arrays(int depth) { return std::string(depth, '[') + "1" + std::string(depth, ']'); }

TEST(JsonInput, ParsesWithinTheLimit) {
  const auto j = soupkit::parse_untrusted_json(nested_arrays(soupkit::kMaxJsonDepth), "f.json");
  EXPECT_TRUE(j.is_array());
  EXPECT_TRUE(soupkit::try_parse_untrusted_json(R"({"a": [1, {"b": null}]})").has_value());
}

TEST(JsonInput, RefusesDeepNestingNamingTheFile) {
  try {
    soupkit::parse_untrusted_json(nested_arrays(100000), "deep.json: header");
    FAIL() << "no error";
  } catch (const soupkit::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("deep.json: header: JSON nested deeper than 64 levels"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(soupkit::try_parse_untrusted_json(nested_arrays(100000)).has_value());
  EXPECT_FALSE(soupkit::try_parse_untrusted_json(std::string(100000, '{')).has_value());
}

TEST(JsonInput, RefusesInvalidJsonNamingTheFile) {
  try {
    soupkit::parse_untrusted_json("{\"a\": ", "x.json");
    FAIL() << "no error";
  } catch (const soupkit::InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("x.json: not valid JSON:", 0), 0u) << e.what();
  }
  EXPECT_FALSE(soupkit::try_parse_untrusted_json("\"unterminated").has_value());
}

TEST(JsonInput, RefusesKeysGivenTwiceAtAnyDepth) {
  EXPECT_THROW(soupkit::parse_untrusted_json(R"({"a": 1, "a": 2})", "f.json"), soupkit::InputError);
  EXPECT_THROW(soupkit::parse_untrusted_json(R"({"x": [{"b": 1, "b": 1}]})", "f.json"), soupkit::InputError);
  EXPECT_FALSE(soupkit::try_parse_untrusted_json(R"({"a": {"k": 1}, "a": {"k": 1}})").has_value());
  // The same key in different objects is fine.
  EXPECT_TRUE(soupkit::try_parse_untrusted_json(R"({"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 2}]})").has_value());
}

TEST(JsonInput, MessagesCarryNoLibraryIds) {
  try {
    soupkit::parse_untrusted_json("[1e400]", "n.json");
    FAIL() << "no error";
  } catch (const soupkit::InputError& e) {
    const std::string text = e.what();
    EXPECT_EQ(text.find("[json.exception"), std::string::npos) << text;
    EXPECT_NE(text.find("number overflow"), std::string::npos) << text;
  }
}

}  // namespace
