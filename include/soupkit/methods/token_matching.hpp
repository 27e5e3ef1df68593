#pragma once
// Transplant's policy for which base token gives each donor token its row:
// by role for special tokens, by the text a token stands for otherwise (the
// texts come from io's tokenizer reader). See docs/transplant.md.
#include "soupkit/io/tokenizer.hpp"

#include <cstdint>
#include <vector>

namespace soupkit {

// How a donor token gets its row.
// Unused: an id no donor token has (a hole in the vocabulary): a zero row.
enum class TokenMatch : std::int8_t { Exact, Special, Approximate, Unused };

struct TokenMapping {
  // Per donor token id: the base token id whose row it takes (-1: none).
  std::vector<std::int64_t> base_id;
  std::vector<TokenMatch> match;
  std::size_t exact = 0, special = 0, approximate = 0, unused = 0;
};

// Matches every donor token to a base token: special tokens by role, then
// by content among special tokens; others by text. When several base tokens
// stand for one text, one of the donor token's kind (regular piece or
// <0xNN> byte fallback) wins, then the lowest id.
TokenMapping match_tokens(const Tokenizer& donor, const Tokenizer& base);

}  // namespace soupkit
