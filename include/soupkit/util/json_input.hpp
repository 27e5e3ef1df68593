#pragma once
// JSON from files soupkit did not write (checkpoint headers, index files,
// tokenizers, logs, journals): parsed with a nesting limit, so a document
// nested 100,000 deep is an input error instead of a stack overflow in
// whatever walks or prints it later.
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace soupkit {

// Deeper than any real checkpoint header, tokenizer or job needs (tokenizer
// normalizer sequences nest a handful of levels).
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; throws InputError "<what>: not valid JSON: ...",
// "<what>: JSON nested deeper than N levels" or "<what>: key 'K' appears
// twice in one JSON object" (readers disagree on which one counts). `what` names the file (and
// the part of it, e.g. "model.safetensors: header").
nlohmann::json parse_untrusted_json(std::string_view text, const std::string& what, int max_depth = kMaxJsonDepth);

// The same, but a bad document gives nullopt instead of an exception (for
// journal lines, where a damaged line is simply skipped).
std::optional<nlohmann::json> try_parse_untrusted_json(std::string_view text, int max_depth = kMaxJsonDepth);

// What a nlohmann exception says, for a message: without its
// "[json.exception.type_error.302]" id, capped to one short line.
std::string json_error_text(const nlohmann::json::exception& e);

}  // namespace soupkit
