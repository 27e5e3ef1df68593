#pragma once
// YAML from files soupkit did not write (job files), loaded so that a
// hostile file is an input error, never a crash or gigabytes of memory:
//   - at most kMaxYamlBytes;
//   - nested at most kMaxYamlDepth deep, checked by a lexical pre-scan
//     before yaml-cpp (whose parser recurses once per level) sees the text;
//   - no aliases (*name): a job never needs them, and each alias expands to
//     a full copy of its anchor, so 10,000 of them multiply the file;
//   - one document;
//   - no key given twice in any mapping (yaml-cpp keeps both and lookups
//     find the first, silently dropping the second).
// Every error names `source` and the line.
#include <yaml-cpp/yaml.h>

#include <string>
#include <string_view>

namespace soupkit::cli {

inline constexpr std::size_t kMaxYamlBytes = 1 << 20;
// A job nests four levels (models[].parameters.weight); the bound leaves
// room for hand-written style and is far below what overflows the stack.
inline constexpr int kMaxYamlDepth = 32;

// An upper bound of the nesting depth of `text` (see yaml_input.cpp for
// what it counts); exposed for tests.
int yaml_depth_bound(std::string_view text);

// Parses one YAML document; throws InputError "<source>: ..." (with the
// line where yaml-cpp gives one).
YAML::Node load_untrusted_yaml(const std::string& text, const std::string& source);

// "line N" of a node for messages ("" for a node without a position).
std::string line_of(const YAML::Node& node);

}  // namespace soupkit::cli
