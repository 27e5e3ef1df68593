#include "soupkit/io/tokenizer.hpp"

#include "soupkit/util/error.hpp"
#include "soupkit/util/json_input.hpp"
#include "soupkit/util/message_text.hpp"

#include <algorithm>
#include <array>
#include <optional>
#include <unordered_map>

namespace soupkit {
namespace {

using nlohmann::json;

const std::string kMetaspace = "\xE2\x96\x81";  // U+2581 '▁', SentencePiece's word marker

// GPT-2's byte-to-unicode table, inverted: code point -> byte. Printable
// Latin-1 bytes stand for themselves; the other 68 bytes are shifted to
// U+0100 and up in byte order (so ' ' = U+0120 'Ġ', '\n' = U+010A 'Ċ').
const std::unordered_map<char32_t, unsigned char>& byte_level_decoder() {
  static const auto table = [] {
    std::unordered_map<char32_t, unsigned char> t;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[printable ? static_cast<char32_t>(b) : next++] = static_cast<unsigned char>(b);
    }
    return t;
  }();
  return table;
}

// Splits UTF-8 into code points; nullopt if malformed.
std::optional<std::vector<char32_t>> code_points(const std::string& s) {
  std::vector<char32_t> out;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t len = utf8_sequence_length(s, i);
    if (len == 0) return std::nullopt;
    const auto lead = static_cast<unsigned char>(s[i]);
    char32_t cp = len == 1 ? lead : lead & (0x7F >> len);
    for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += len;
  }
  return out;
}

// A token of a byte-level vocabulary as bytes; a token with characters
// outside the alphabet (rare hand-added tokens) stands for its own UTF-8.
std::string decode_byte_level(const std::string& piece) {
  const auto cps = code_points(piece);
  if (!cps) return piece;
  const auto& table = byte_level_decoder();
  std::string bytes;
  for (char32_t cp : *cps) {
    const auto it = table.find(cp);
    if (it == table.end()) return piece;
    bytes.push_back(static_cast<char>(it->second));
  }
  return bytes;
}

// "<0xNN>" -> the byte NN.
std::optional<char> byte_fallback_value(const std::string& piece) {
  if (piece.size() != 6 || !piece.starts_with("<0x") || piece.back() != '>') return std::nullopt;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (digit < 0) return std::nullopt;
    value = value * 16 + digit;
  }
  return static_cast<char>(value);
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}

// Whether any object inside `j` has "type": `type`.
bool has_component(const json& j, const std::string& type) {
  if (j.is_object()) {
    if (const auto it = j.find("type"); it != j.end() && it->is_string() && *it == type) return true;
    for (const auto& [key, value] : j.items())
      if (has_component(value, type)) return true;
  } else if (j.is_array()) {
    for (const auto& value : j)
      if (has_component(value, type)) return true;
  }
  return false;
}

bool mentions_metaspace(const json& j) { return j.dump().find(kMetaspace) != std::string::npos || j.dump().find("\\u2581") != std::string::npos; }

std::string decoding_of(const json& tok, const std::string& model_type) {
  const json parts = {tok.value("normalizer", json()), tok.value("pre_tokenizer", json()), tok.value("decoder", json())};
  if (has_component(parts, "ByteLevel")) return "byte-level";
  if (has_component(parts, "Metaspace") || mentions_metaspace(parts)) return "sentencepiece";
  if (model_type == "WordPiece") return "wordpiece";
  if (model_type == "Unigram") return "sentencepiece";
  return "plain";
}

std::string model_type_of(const json& model, const std::string& where) {
  if (model.contains("type") && model["type"].is_string()) return model["type"].get<std::string>();
  // Older tokenizer.json files omit the type; the fields tell.
  if (model.contains("merges")) return "BPE";
  if (model.contains("vocab") && model["vocab"].is_array()) return "Unigram";
  if (model.contains("continuing_subword_prefix") && model.contains("max_input_chars_per_word")) return "WordPiece";
  throw InputError(fmt::format("{}: cannot tell the tokenizer model type (no \"type\" in \"model\")", where));
}

// A role's token in tokenizer_config.json / special_tokens_map.json: a
// string, an object with a string "content", or null (no such token, as
// Hugging Face writes "pad_token": null). Anything else is refused: taken
// as absent, a malformed entry would silently change which tokens match by
// role.
std::optional<std::string> role_token(const json& config, const std::string& key, const std::string& where) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const auto& v = config[key];
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw InputError(fmt::format("{}: \"{}\" is {}, not a token (a string, an object with a string \"content\", or "
                               "null)",
                               where, key, json_excerpt(v)));
}

std::optional<json> read_json_aux(const CheckpointReader& model, const std::string& name) {
  const auto files = model.aux_files();
  if (std::none_of(files.begin(), files.end(), [&](const AuxFileInfo& f) { return f.name == name; })) return std::nullopt;
  return parse_untrusted_json(model.read_aux(name), (model.path() / name).string());
}

// `key` of a tokenizer.json object as a boolean (`fallback` when absent or null).
bool bool_field(const json& object, const std::string& key, bool fallback, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  SOUPKIT_INPUT_ERROR_IF(!it->is_boolean(), "{}: \"{}\" is {}, not true or false", where, key, json_excerpt(*it));
  return it->get<bool>();
}

// One token as the file declares it, before anything is sized by its id.
struct DeclaredToken {
  std::int64_t id = 0;
  std::string piece;
  bool added = false;  // from "added_tokens": may take an id the vocabulary also has
  bool special = false;
};

std::int64_t token_id(const json& id, const std::string& piece, const std::string& where) {
  SOUPKIT_INPUT_ERROR_IF(!id.is_number_integer(), "{}: token '{}' has id {}, not an integer", where, excerpt(piece),
                         json_excerpt(id));
  SOUPKIT_INPUT_ERROR_IF(id.is_number_unsigned() && id.get<std::uint64_t>() > std::uint64_t{INT64_MAX},
                         "{}: token '{}' has id {} (out of range)", where, excerpt(piece), json_excerpt(id));
  return id.get<std::int64_t>();
}

// model.vocab: Unigram lists [piece, score] by id; BPE and WordPiece map pieces to ids.
std::vector<DeclaredToken> vocab_tokens(const json& vocab, const std::string& model_type, const std::string& where) {
  std::vector<DeclaredToken> tokens;
  if (model_type == "Unigram") {
    SOUPKIT_INPUT_ERROR_IF(!vocab.is_array(), "{}: a Unigram \"vocab\" must be a list of [piece, score]", where);
    for (std::size_t i = 0; i < vocab.size(); ++i) {
      const json& entry = vocab[i];
      SOUPKIT_INPUT_ERROR_IF(!entry.is_array() || entry.empty() || !entry[0].is_string(),
                             "{}: \"vocab\" entry {} is {}, not [piece, score]", where, i, json_excerpt(entry));
      tokens.push_back({static_cast<std::int64_t>(i), entry[0].get<std::string>()});
    }
    return tokens;
  }
  SOUPKIT_INPUT_ERROR_IF(!vocab.is_object(), "{}: a {} \"vocab\" must map pieces to ids", where, model_type);
  for (const auto& [piece, id] : vocab.items()) tokens.push_back({token_id(id, piece, where), piece});
  return tokens;
}

std::vector<DeclaredToken> added_tokens(const json& tok, const std::string& where) {
  std::vector<DeclaredToken> tokens;
  const auto list = tok.find("added_tokens");
  if (list == tok.end() || list->is_null()) return tokens;
  SOUPKIT_INPUT_ERROR_IF(!list->is_array(), "{}: \"added_tokens\" is not a list", where);
  for (std::size_t i = 0; i < list->size(); ++i) {
    const json& a = (*list)[i];
    const std::string entry = fmt::format("{}: added_tokens[{}]", where, i);
    SOUPKIT_INPUT_ERROR_IF(!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id"),
                           "{}: expected an object with \"id\" and a string \"content\"", entry);
    const std::string& content = a["content"].get_ref<const std::string&>();
    tokens.push_back({token_id(a["id"], content, where), content, true, bool_field(a, "special", false, entry)});
  }
  return tokens;
}

// Every id must lie below the number of tokens the file declares: real
// tokenizers number their tokens densely (added tokens follow the
// vocabulary or reuse its ids), so a larger id is a corrupt or hostile
// file, and the tables sized by the largest id stay as small as the file.
// Two tokens of one list with one id are ambiguous.
void check_ids(const std::vector<DeclaredToken>& tokens, const std::string& where) {
  const auto bound = static_cast<std::int64_t>(tokens.size());
  std::unordered_map<std::int64_t, const DeclaredToken*> vocab_owner, added_owner;
  for (const auto& token : tokens) {
    SOUPKIT_INPUT_ERROR_IF(token.id < 0 || token.id >= bound,
                           "{}: token '{}' has id {}, outside [0, {}) (the file declares {} tokens)", where,
                           excerpt(token.piece), token.id, bound, bound);
    auto& owner = token.added ? added_owner : vocab_owner;
    const auto [it, fresh] = owner.emplace(token.id, &token);
    SOUPKIT_INPUT_ERROR_IF(!fresh, "{}: tokens '{}' and '{}' both have id {}{}", where, excerpt(it->second->piece),
                           excerpt(token.piece), token.id, token.added ? " in \"added_tokens\"" : "");
  }
}

// Sizes the by-id tables for checked ids (see check_ids).
void allocate_ids(Tokenizer& t, const std::vector<DeclaredToken>& tokens) {
  std::int64_t largest = -1;
  for (const auto& token : tokens) largest = std::max(largest, token.id);
  const auto n = static_cast<std::size_t>(largest + 1);
  t.pieces.resize(n);
  t.texts.resize(n);
  t.present.resize(n, false);
  t.special.resize(n, false);
  t.byte_fallback.resize(n, false);
}

std::string text_of(const Tokenizer& t, const std::string& piece, const std::string& wordpiece_prefix) {
  if (t.decoding == "byte-level") return decode_byte_level(piece);
  if (t.decoding == "sentencepiece") return replace_all(piece, kMetaspace, " ");
  if (t.decoding == "wordpiece")
    return piece.starts_with(wordpiece_prefix) ? piece.substr(wordpiece_prefix.size()) : " " + piece;
  return piece;
}

}  // namespace

Tokenizer read_tokenizer(const CheckpointReader& model) {
  Tokenizer t;
  t.source = (model.path() / "tokenizer.json").string();
  const auto parsed = read_json_aux(model, "tokenizer.json");
  SOUPKIT_INPUT_ERROR_IF(!parsed, "{}: no tokenizer.json in this model (a transplant needs both tokenizers)",
                         model.path().string());
  const json& tok = *parsed;
  SOUPKIT_INPUT_ERROR_IF(!tok.is_object() || !tok.contains("model") || !tok["model"].is_object(),
                         "{}: no \"model\" object", t.source);
  const json& m = tok["model"];
  t.model_type = model_type_of(m, t.source);
  SOUPKIT_INPUT_ERROR_IF(t.model_type != "BPE" && t.model_type != "Unigram" && t.model_type != "WordPiece",
                         "{}: unsupported tokenizer model type '{}' (supported: BPE, Unigram, WordPiece)", t.source,
                         excerpt(t.model_type));
  t.decoding = decoding_of(tok, t.model_type);
  SOUPKIT_INPUT_ERROR_IF(!m.contains("vocab"), "{}: the {} model has no \"vocab\"", t.source, t.model_type);
  std::vector<DeclaredToken> tokens = vocab_tokens(m["vocab"], t.model_type, t.source);
  const std::size_t vocab_count = tokens.size();
  for (auto& a : added_tokens(tok, t.source)) tokens.push_back(std::move(a));
  check_ids(tokens, t.source);
  allocate_ids(t, tokens);

  const bool byte_fallback = t.model_type == "Unigram" || bool_field(m, "byte_fallback", false, t.source + ": model") ||
                             t.decoding == "sentencepiece";
  const auto prefix_it = m.find("continuing_subword_prefix");
  const std::string prefix = prefix_it != m.end() && prefix_it->is_string() ? prefix_it->get<std::string>() : "##";
  // A piece decoded by the model's rules: a <0xNN> byte-fallback token, or text per the decoding.
  auto decode_piece = [&](std::size_t i, const std::string& piece) {
    const auto byte = byte_fallback ? byte_fallback_value(piece) : std::nullopt;
    t.byte_fallback[i] = byte.has_value();
    t.texts[i] = byte ? std::string(1, *byte) : text_of(t, piece, prefix);
  };
  for (std::size_t k = 0; k < vocab_count; ++k) {
    const auto i = static_cast<std::size_t>(tokens[k].id);
    t.pieces[i] = tokens[k].piece;
    t.present[i] = true;
    decode_piece(i, tokens[k].piece);
  }
  // Added tokens stand for their content literally, except a non-special
  // one whose id the vocabulary also has: the model produces that id from
  // normalized text (Gemma 3 lists its whitespace runs, "\u2581\u2581", ...,
  // both in the BPE vocabulary and as added tokens with normalized: false),
  // so it decodes as the model decodes it, as Hugging Face's decoder does.
  // Special tokens keep their own space whatever the vocabulary says.
  const std::vector<bool> in_vocabulary = t.present;
  for (std::size_t k = vocab_count; k < tokens.size(); ++k) {
    const auto i = static_cast<std::size_t>(tokens[k].id);
    t.pieces[i] = tokens[k].piece;
    t.present[i] = true;
    t.special[i] = tokens[k].special;
    if (!tokens[k].special && in_vocabulary[i]) {
      decode_piece(i, tokens[k].piece);
    } else {
      t.texts[i] = tokens[k].piece;
      t.byte_fallback[i] = false;
    }
  }
  SOUPKIT_INPUT_ERROR_IF(t.size() == 0, "{}: the vocabulary is empty", t.source);

  // Roles: tokenizer_config.json first, then special_tokens_map.json, then the model's unk_token.
  const auto config = read_json_aux(model, "tokenizer_config.json");
  const auto special_map = read_json_aux(model, "special_tokens_map.json");
  std::unordered_map<std::string, std::int64_t> by_content;
  for (std::int64_t id = t.size() - 1; id >= 0; --id)
    if (t.present[static_cast<std::size_t>(id)]) by_content[t.pieces[static_cast<std::size_t>(id)]] = id;
  for (const std::string role : {"bos", "eos", "pad", "unk"}) {
    // Both files are checked even when the first names the token.
    std::optional<std::string> content, from_map;
    if (config) content = role_token(*config, role + "_token", (model.path() / "tokenizer_config.json").string());
    if (special_map)
      from_map = role_token(*special_map, role + "_token", (model.path() / "special_tokens_map.json").string());
    if (!content) content = from_map;
    if (!content && role == "unk" && m.contains("unk_token") && m["unk_token"].is_string())
      content = m["unk_token"].get<std::string>();
    if (!content) continue;
    if (const auto it = by_content.find(*content); it != by_content.end()) t.roles[role] = it->second;
  }
  return t;
}

}  // namespace soupkit
