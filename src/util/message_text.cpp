#include "soupkit/util/message_text.hpp"

#include <fmt/format.h>

namespace soupkit {

std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto lead = static_cast<unsigned char>(text[i]);
  if (lead < 0x80) return 1;
  const std::size_t length = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3
                             : lead >= 0xF0 && lead <= 0xF4                                 ? 4
                                                                                            : 0;
  if (length == 0 || i + length > text.size()) return 0;
  char32_t cp = lead & (0x7F >> length);
  for (std::size_t k = 1; k < length; ++k) {
    const auto next = static_cast<unsigned char>(text[i + k]);
    if ((next & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (next & 0x3F);
  }
  constexpr char32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kSmallest[length] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return length;
}

std::string excerpt(std::string_view text, std::size_t max_chars) {
  const std::string_view shown = text.substr(0, max_chars);
  std::string out;
  out.reserve(shown.size() + 16);
  for (std::size_t i = 0; i < shown.size();) {
    const auto byte = static_cast<unsigned char>(shown[i]);
    const std::size_t length = utf8_sequence_length(shown, i);
    if (length == 0 || byte < 0x20 || byte == 0x7f) {
      // Control characters and bytes that are not UTF-8 are shown as
      // escapes: the message stays one valid line.
      out += fmt::format("\\x{:02x}", byte);
      ++i;
    } else {
      out.append(shown.substr(i, length));
      i += length;
    }
  }
  if (shown.size() < text.size()) out += fmt::format("... ({} bytes)", text.size());
  return out;
}

bool is_valid_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t length = utf8_sequence_length(text, i);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

std::string json_excerpt(const nlohmann::json& value, std::size_t max_chars) {
  // Invalid UTF-8 inside strings is replaced rather than thrown about: this
  // text only goes into a message.
  return excerpt(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), max_chars);
}

}  // namespace soupkit
