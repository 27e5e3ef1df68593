#include "soupkit/error.hpp"
#include "soupkit/json_input.hpp"

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

}  // namespace
