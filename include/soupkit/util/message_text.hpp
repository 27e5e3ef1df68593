#pragma once
// Quoting text from untrusted input into an error message: a tensor name, a
// token or a JSON value may be megabytes long or hold NUL and control
// characters, and a message must stay one readable line that is not cut
// short by a NUL.
#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace soupkit {

// At most this many characters of an input's text are quoted in a message.
inline constexpr std::size_t kMaxQuotedChars = 80;

// `text` with control characters, NUL and DEL written as \xNN, cut after
// `max_chars` input bytes with "... (N bytes)" so the reader knows it was cut.
std::string excerpt(std::string_view text, std::size_t max_chars = kMaxQuotedChars);

// Bytes in the well-formed UTF-8 sequence at text[i] (1 for ASCII), or 0 if
// there is none (a stray byte, an overlong form, a surrogate, past
// U+10FFFF, cut short).
std::size_t utf8_sequence_length(std::string_view text, std::size_t i);

// Is `text` well-formed UTF-8 (no overlong forms, surrogates or values
// past U+10FFFF)? Names go into JSON plans, journals and headers, which
// hold only UTF-8.
bool is_valid_utf8(std::string_view text);

// A JSON value as compact JSON text, through excerpt().
std::string json_excerpt(const nlohmann::json& value, std::size_t max_chars = kMaxQuotedChars);

}  // namespace soupkit
