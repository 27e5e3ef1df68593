#include "yaml_input.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>

#include <map>
#include <sstream>
#include <vector>

namespace soupkit::cli {
namespace {

// The pre-scan: an upper bound of the nesting depth, from the text alone.
// It counts "openers":
//   - each indentation deeper than the enclosing lines' (block collections
//     nest by indentation);
//   - each "- ", "? " or ": " that opens a line's content ("- - a");
//   - each '[' or '{' not yet closed; ']' and '}' close one, except inside
//     quoted scalars (a quote opens one when it starts a value: after the
//     line's indentation, a space or one of "[{,:"; it closes as YAML says:
//     '' and \" are escapes).
// An opener can hold two levels (a map and a sequence at the same
// indentation, "- a: b", "[a: b]"), so the bound is 2 x openers + 1 (a
// mapping on the line itself). It over-counts rather than under-counts:
// indentation and brackets are counted in comments, block scalars and
// quoted text too (only closing brackets inside quotes are ignored). A job
// file never comes near the limit; yaml-cpp's own recursion guard stays as
// a second line.
class DepthScan {
 public:
  void line(std::string_view text) {
    const std::size_t indent = text.find_first_not_of(" \t");
    if (indent == std::string_view::npos) return;
    while (!indents_.empty() && indents_.back() > indent) indents_.pop_back();
    if (indents_.empty() || indents_.back() < indent) indents_.push_back(indent);
    block_ = static_cast<int>(indents_.size()) + leading_indicators(text.substr(indent));
    note(flow_);
    characters(text, indent);
  }

  int deepest() const { return deepest_; }

 private:
  // "- - ? a" -> 3: collections opened on this line before its first value.
  static int leading_indicators(std::string_view content) {
    int count = 0;
    std::size_t at = 0;
    while (at < content.size() && (content[at] == '-' || content[at] == '?' || content[at] == ':') &&
           (at + 1 == content.size() || content[at + 1] == ' ' || content[at + 1] == '\t')) {
      ++count;
      at = content.find_first_not_of(" \t", at + 1);
      if (at == std::string_view::npos) break;
    }
    return count;
  }

  void characters(std::string_view text, std::size_t indent) {
    for (std::size_t i = indent; i < text.size(); ++i) {
      const char c = text[i];
      if (quote_ == '"') {
        if (c == '\\') ++i;
        else if (c == '"') quote_ = 0;
      } else if (quote_ == '\'') {
        if (c == '\'' && i + 1 < text.size() && text[i + 1] == '\'') ++i;
        else if (c == '\'') quote_ = 0;
      } else if ((c == '"' || c == '\'') && starts_value(text, i, indent)) {
        quote_ = c;
      } else if (c == ']' || c == '}') {
        flow_ = std::max(0, flow_ - 1);
      }
      if (c == '[' || c == '{') note(++flow_);
    }
  }

  void note(int flow) { deepest_ = std::max(deepest_, 2 * (block_ + flow) + 1); }

  static bool starts_value(std::string_view text, std::size_t i, std::size_t indent) {
    if (i == indent) return true;
    const char before = text[i - 1];
    return before == ' ' || before == '\t' || before == '[' || before == '{' || before == ',' || before == ':';
  }

  std::vector<std::size_t> indents_;
  int block_ = 0;  // the current line's block levels
  int flow_ = 0;
  char quote_ = 0;  // a quoted scalar may span lines
  int deepest_ = 0;
};

// yaml-cpp's events, to refuse what YAML::Load would expand or drop.
class RefuseAliases final : public YAML::EventHandler {
 public:
  explicit RefuseAliases(const std::string& source) : source_(source) {}
  void OnDocumentStart(const YAML::Mark& mark) override {
    SOUPKIT_INPUT_ERROR_IF(++documents_ > 1, "{}: line {}: a second YAML document ('---'); a job file holds one",
                           source_, mark.line + 1);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override {
    throw InputError(fmt::format("{}: line {}: YAML aliases (*name) are not allowed in a job file; write the value out",
                                 source_, mark.line + 1));
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

 private:
  const std::string& source_;
  int documents_ = 0;
};

InputError not_valid_yaml(const YAML::Exception& e, const std::string& source) {
  if (e.mark.is_null()) return InputError(fmt::format("{}: not valid YAML: {}", source, e.msg));
  return InputError(fmt::format("{}: not valid YAML: line {}, column {}: {}", source, e.mark.line + 1,
                                e.mark.column + 1, e.msg));
}

// YAML::Load keeps every pair of a mapping whose key is given twice, and
// lookups find the first, so "weight: 1, weight: 3" would silently mean 1.
// Every mapping at every level is checked here, once, so no reader of a key
// has to; `path` names the mapping in messages ("models[0].parameters").
// The recursion is bounded by kMaxYamlDepth (checked before loading).
void refuse_duplicate_keys(const YAML::Node& node, const std::string& source, const std::string& path) {
  if (node.IsSequence()) {
    for (std::size_t i = 0; i < node.size(); ++i)
      refuse_duplicate_keys(node[i], source, fmt::format("{}[{}]", path, i));
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, YAML::Mark> first_seen;
  for (const auto& kv : node) {
    // Keys that are not names are refused, with their line, where keys are read.
    if (!kv.first.IsScalar()) continue;
    const std::string key = path.empty() ? excerpt(kv.first.Scalar()) : path + "." + excerpt(kv.first.Scalar());
    const auto [first, inserted] = first_seen.emplace(kv.first.Scalar(), kv.first.Mark());
    SOUPKIT_INPUT_ERROR_IF(!inserted, "{}: {}: given twice ({}); first given on line {}", source, key, line_of(kv.first),
                           first->second.line + 1);
    refuse_duplicate_keys(kv.second, source, key);
  }
}

}  // namespace

int yaml_depth_bound(std::string_view text) {
  DepthScan scan;
  for (std::size_t start = 0; start < text.size();) {
    const std::size_t end = std::min(text.find('\n', start), text.size());
    scan.line(text.substr(start, end - start));
    start = end + 1;
  }
  return scan.deepest();
}

YAML::Node load_untrusted_yaml(const std::string& text, const std::string& source) {
  SOUPKIT_INPUT_ERROR_IF(text.size() > kMaxYamlBytes, "{}: {} bytes is too large for a job file (limit {})", source,
                         text.size(), kMaxYamlBytes);
  SOUPKIT_INPUT_ERROR_IF(text.find('\0') != std::string::npos, "{}: a NUL byte in a job file", source);
  const int depth = yaml_depth_bound(text);
  SOUPKIT_INPUT_ERROR_IF(depth > kMaxYamlDepth, "{}: YAML nested deeper than {} levels (counted {})", source,
                         kMaxYamlDepth, depth);
  try {
    std::istringstream events_in(text);
    YAML::Parser parser(events_in);
    RefuseAliases refuse(source);
    while (parser.HandleNextDocument(refuse)) {
    }
    YAML::Node root = YAML::Load(text);
    refuse_duplicate_keys(root, source, "");
    return root;
  } catch (const YAML::Exception& e) {
    throw not_valid_yaml(e, source);
  }
}

std::string line_of(const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  return mark.is_null() ? std::string() : fmt::format("line {}", mark.line + 1);
}

}  // namespace soupkit::cli
