#include "soupkit/message_text.hpp"

#include <fmt/format.h>

namespace soupkit {

std::string excerpt(std::string_view text, std::size_t max_chars) {
  const std::string_view shown = text.substr(0, max_chars);
  std::string out;
  out.reserve(shown.size() + 16);
  for (const char c : shown) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f)
      out += fmt::format("\\x{:02x}", byte);
    else
      out += c;
  }
  if (shown.size() < text.size()) out += fmt::format("... ({} bytes)", text.size());
  return out;
}

std::string json_excerpt(const nlohmann::json& value, std::size_t max_chars) {
  // Invalid UTF-8 inside strings is replaced rather than thrown about: this
  // text only goes into a message.
  return excerpt(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), max_chars);
}

}  // namespace soupkit
