#include "soupkit/json_input.hpp"

#include "soupkit/error.hpp"
#include "soupkit/message_text.hpp"

namespace soupkit {
namespace {

struct TooDeep {};

nlohmann::json parse_limited(std::string_view text, int max_depth) {
  // The callback sees every value with its depth before it is linked into
  // the document; nlohmann's parser itself keeps its stack on the heap.
  const nlohmann::json::parser_callback_t limit = [max_depth](int depth, nlohmann::json::parse_event_t,
                                                              nlohmann::json&) {
    if (depth > max_depth) throw TooDeep{};
    return true;
  };
  return nlohmann::json::parse(text.begin(), text.end(), limit);
}

}  // namespace

nlohmann::json parse_untrusted_json(std::string_view text, const std::string& what, int max_depth) {
  try {
    return parse_limited(text, max_depth);
  } catch (const TooDeep&) {
    throw InputError(fmt::format("{}: JSON nested deeper than {} levels", what, max_depth));
  } catch (const nlohmann::json::exception& e) {
    // nlohmann quotes the token it was reading ("last read: ..."), which
    // can be a whole unterminated string: keep the message one short line.
    throw InputError(fmt::format("{}: not valid JSON: {}", what, excerpt(e.what(), 3 * kMaxQuotedChars)));
  }
}

std::optional<nlohmann::json> try_parse_untrusted_json(std::string_view text, int max_depth) {
  try {
    return parse_limited(text, max_depth);
  } catch (const TooDeep&) {
    return std::nullopt;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

}  // namespace soupkit
