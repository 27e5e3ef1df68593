#include "soupkit/util/json_input.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/message_text.hpp"

#include <unordered_set>
#include <vector>

namespace soupkit {
namespace {

struct TooDeep {};
struct DuplicateKey {
  std::string key;
};

nlohmann::json parse_limited(std::string_view text, int max_depth) {
  // The callback sees every value with its depth before it is linked into
  // the document; nlohmann's parser itself keeps its stack on the heap.
  // A key given twice in one object is refused: nlohmann would keep the
  // last, another reader the first, and the two would disagree on what the
  // file says (a shape, an offset, a token id).
  std::vector<std::unordered_set<std::string>> keys_of_open_objects;
  const nlohmann::json::parser_callback_t limit = [&](int depth, nlohmann::json::parse_event_t event,
                                                      nlohmann::json& parsed) {
    if (depth > max_depth) throw TooDeep{};
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      keys_of_open_objects.emplace_back();
    } else if (event == Event::object_end) {
      keys_of_open_objects.pop_back();
    } else if (event == Event::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!keys_of_open_objects.back().insert(key).second) throw DuplicateKey{key};
    }
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
  } catch (const DuplicateKey& d) {
    throw InputError(fmt::format("{}: key '{}' appears twice in one JSON object", what, excerpt(d.key)));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("{}: not valid JSON: {}", what, json_error_text(e)));
  }
}

std::optional<nlohmann::json> try_parse_untrusted_json(std::string_view text, int max_depth) {
  try {
    return parse_limited(text, max_depth);
  } catch (const TooDeep&) {
    return std::nullopt;
  } catch (const DuplicateKey&) {
    return std::nullopt;
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::string json_error_text(const nlohmann::json::exception& e) {
  // "[json.exception.parse_error.101] parse error at ...": the bracketed
  // id means nothing to a user. nlohmann also quotes the token it was
  // reading ("last read: ..."), which can be a whole unterminated string:
  // keep the message one short line.
  std::string_view text = e.what();
  if (text.starts_with("[json.exception.")) {
    const auto end = text.find("] ");
    if (end != std::string_view::npos) text.remove_prefix(end + 2);
  }
  return excerpt(text, 3 * kMaxQuotedChars);
}

}  // namespace soupkit
