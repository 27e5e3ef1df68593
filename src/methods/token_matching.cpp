#include "soupkit/methods/token_matching.hpp"

#include <string>
#include <unordered_map>

namespace soupkit {

TokenMapping match_tokens(const Tokenizer& donor, const Tokenizer& base) {
  // Base lookups, lowest id first: ordinary text, from regular pieces and
  // from byte-fallback tokens apart, and special tokens' content.
  std::unordered_map<std::string, std::int64_t> base_text, base_fallback, base_special;
  for (std::int64_t id = base.size() - 1; id >= 0; --id) {
    const auto i = static_cast<std::size_t>(id);
    if (!base.present[i] || base.texts[i].empty()) continue;
    (base.special[i] ? base_special : base.byte_fallback[i] ? base_fallback : base_text)[base.texts[i]] = id;
  }
  // A donor token looks first among base tokens of its own kind (<0xNN> for
  // <0xNN>, so one tokenizer maps onto itself), then among the others.
  auto find_text = [&](std::size_t i) -> std::int64_t {
    const auto& first = donor.byte_fallback[i] ? base_fallback : base_text;
    const auto& second = donor.byte_fallback[i] ? base_text : base_fallback;
    for (const auto* lookup : {&first, &second})
      if (const auto it = lookup->find(donor.texts[i]); it != lookup->end()) return it->second;
    return -1;
  };
  std::unordered_map<std::int64_t, std::string> donor_role;
  // A token with several roles takes the strongest: bos, then eos, unk, pad (later ones overwrite).
  for (const std::string role : {"pad", "unk", "eos", "bos"})
    if (const auto it = donor.roles.find(role); it != donor.roles.end() && base.roles.count(role))
      donor_role[it->second] = role;

  TokenMapping map;
  map.base_id.assign(static_cast<std::size_t>(donor.size()), -1);
  map.match.assign(static_cast<std::size_t>(donor.size()), TokenMatch::Approximate);
  for (std::int64_t id = 0; id < donor.size(); ++id) {
    const auto i = static_cast<std::size_t>(id);
    if (!donor.present[i]) {
      map.match[i] = TokenMatch::Unused;
      ++map.unused;
      continue;
    }
    if (const auto role = donor_role.find(id); role != donor_role.end()) {
      map.base_id[i] = base.roles.at(role->second);
      map.match[i] = TokenMatch::Special;
      ++map.special;
      continue;
    }
    std::int64_t match = -1;
    if (!donor.texts[i].empty()) {
      if (!donor.special[i]) {
        match = find_text(i);
      } else if (const auto it = base_special.find(donor.texts[i]); it != base_special.end()) {
        match = it->second;
      }
    }
    if (match >= 0) {
      map.base_id[i] = match;
      map.match[i] = TokenMatch::Exact;
      ++map.exact;
    } else {
      ++map.approximate;
    }
  }
  return map;
}

}  // namespace soupkit
