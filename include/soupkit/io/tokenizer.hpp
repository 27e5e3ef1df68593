#pragma once
// Reading a Hugging Face tokenizer (tokenizer.json plus tokenizer_config.json
// / special_tokens_map.json) and mapping every token to the text it stands
// for, so that tokens can be compared across tokenizer families (the
// matching policy itself is transplant's: methods/token_matching.hpp):
//   - byte-level BPE (GPT-2, Llama 3, Qwen): each character of a token is one
//     byte through GPT-2's byte-to-unicode alphabet ('Ġ' = space, 'Ċ' = \n);
//   - SentencePiece-style (Llama 2, Mistral, Gemma; BPE or Unigram): '▁' is a
//     space and '<0xNN>' byte-fallback tokens are the byte NN;
//   - WordPiece (BERT): '##x' continues a word ("x"), any other token starts
//     one (" x");
//   - added tokens: their content, literally, except that a non-special one
//     whose id is in the model vocabulary decodes as the model decodes it
//     (Gemma 3's "▁▁" added token is two spaces); special ones live apart
//     from ordinary text (a special "<s>" never matches the text "<s>").
// See docs/transplant.md for the rules.
#include "soupkit/io/checkpoint.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace soupkit {

struct Tokenizer {
  std::string source;      // "<model dir>/tokenizer.json", for messages
  std::string model_type;  // BPE, Unigram, WordPiece
  std::string decoding;    // byte-level, sentencepiece, wordpiece or plain
  // By token id (size = largest id + 1); ids no token uses are absent.
  std::vector<std::string> pieces;  // the token as written in the vocabulary
  std::vector<std::string> texts;   // the bytes it stands for (see above)
  std::vector<bool> present, special, byte_fallback;
  // Roles named by tokenizer_config.json / special_tokens_map.json:
  // "bos", "eos", "pad", "unk" -> token id (roles whose token is unknown are absent).
  std::map<std::string, std::int64_t> roles;

  std::int64_t size() const { return static_cast<std::int64_t>(pieces.size()); }
};

// Reads the tokenizer carried with a model (its aux files). Throws
// InputError naming the file when tokenizer.json is missing, malformed or of
// an unsupported model type.
Tokenizer read_tokenizer(const CheckpointReader& model);

}  // namespace soupkit
