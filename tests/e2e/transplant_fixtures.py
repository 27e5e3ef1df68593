"""Model directories with a planted answer for the transplant tests.

Embeddings are built so the transplant has a known right answer: every
donor row of a token the base lacks is an exact sparse combination of shared
tokens' donor rows, and its expected new row is the same combination of the
shared tokens' base rows. Shared rows must come out as the base's bytes.
"""
import json
import os
import shutil

import numpy as np

from soupkit_testlib import bf16_bits_to_f32, f32_to_bf16_bits, write_model_dir
from tokenizer_fixtures import _bytes_to_unicode, shared_tokens

WORDS = ["the", "cat", "dog", "house", "tree", "run", "jump", "blue", "green", "river", "stone", "light", "night",
         "water", "fire", "earth", "wind", "cloud", "rain", "snow", "sun", "moon", "star", "road", "city", "town",
         "field", "bird", "fish", "horse", "apple", "bread", "milk", "cheese", "salt", "sugar", "table", "chair",
         "door", "window", "paper", "book", "pen", "letter", "word", "line", "page", "story", "song", "music"]


def byte_level_tokenizer(words, specials=("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")):
    """A GPT-2-style byte-level BPE tokenizer.json: the 256 bytes, ' word' and 'word' pieces, added specials."""
    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    for w in words:
        for piece in ("\u0120" + w, w):
            vocab.setdefault(piece, len(vocab))
    added = [{"id": len(vocab) + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    tok = {"version": "1.0", "added_tokens": added, "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "byte_fallback": False, "vocab": vocab,
                     "merges": []}}
    config = {"bos_token": specials[0], "eos_token": specials[1], "pad_token": specials[2]}
    return tok, config


def sentencepiece_tokenizer(words, single_chars="abcdefgh"):
    """A Llama-2-style tokenizer.json: <unk> <s> </s>, <0xNN> byte fallback, '▁word' pieces, a few single characters."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for c in single_chars:  # texts also reachable through <0xNN>: a regular donor piece must take these
        vocab[c] = len(vocab)
    for w in words:
        vocab["\u2581" + w] = len(vocab)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, s in enumerate(["<unk>", "<s>", "</s>"])]
    tok = {"version": "1.0", "added_tokens": added,
           "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                               {"type": "Replace", "pattern": {"String": " "},
                                                                "content": "\u2581"}]},
           "pre_tokenizer": None,
           "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"},
                                                         "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]},
           "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "byte_fallback": True, "vocab": vocab,
                     "merges": []}}
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}
    return tok, config


def wordpiece_tokenizer(words):
    """A BERT-style tokenizer.json: [PAD] [UNK] [CLS] [SEP], words, '##' continuations."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {s: i for i, s in enumerate(specials)}
    for w in words:
        vocab.setdefault(w, len(vocab))
        vocab.setdefault("##" + w[1:], len(vocab))
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, s in enumerate(specials)]
    tok = {"version": "1.0", "added_tokens": added, "normalizer": {"type": "BertNormalizer", "lowercase": True},
           "pre_tokenizer": {"type": "BertPreTokenizer"}, "decoder": {"type": "WordPiece", "prefix": "##"},
           "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                     "max_input_chars_per_word": 100, "vocab": vocab}}
    return tok, {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"}


def unigram_tokenizer(words):
    """A T5-style Unigram tokenizer.json: <pad> </s> <unk>, '▁word' and bare suffix pieces, Metaspace."""
    pieces = [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0]]
    for i, w in enumerate(words):
        pieces.append(["\u2581" + w, -1.0 - i])
        pieces.append([w[1:], -2.0 - i])
    seen, unique = set(), []
    for p in pieces:
        if p[0] not in seen:
            seen.add(p[0])
            unique.append(p)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, s in enumerate(["<pad>", "</s>", "<unk>"])]
    tok = {"version": "1.0", "added_tokens": added, "normalizer": None,
           "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True},
           "decoder": {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": True},
           "model": {"type": "Unigram", "unk_id": 2, "vocab": unique}}
    return tok, {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


def vocab_size(tok):
    vocab = tok["model"]["vocab"]
    ids = (list(range(len(vocab))) if isinstance(vocab, list) else list(vocab.values()))
    ids += [a["id"] for a in tok.get("added_tokens", [])]
    return max(ids) + 1


def write_tokenizer(directory, tok, config, config_name="tokenizer_config.json"):
    """tokenizer.json, and the special tokens in tokenizer_config.json (or special_tokens_map.json)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(directory, config_name), "w", encoding="utf-8") as f:
        json.dump(config, f)


class Planted:
    """A donor/base pair with a planted answer, written as model directories."""

    def __init__(self, root, donor_tok_dir, base_tok_dir, donor_vocab, base_vocab, hidden_donor=48, hidden_base=32,
                 sparsity=3, base_tied=False, donor_tied=False, extra_donor_rows=7, extra_base_rows=5, seed=0,
                 base_dtype="F32"):
        rng = np.random.default_rng(seed)
        self.shared = shared_tokens(donor_tok_dir, base_tok_dir)
        self.donor_vocab, self.base_vocab = donor_vocab, base_vocab
        # The dictionary: donor tokens matched by text (special tokens matched by role are not atoms).
        self.atoms = sorted(i for i, (_, how) in self.shared.items() if how == "exact")
        self.approx = [i for i in range(donor_vocab) if i not in self.shared]
        self.base_tied, self.donor_tied = base_tied, donor_tied

        def planted(hidden_d):
            """A donor matrix whose approximated rows are planted: (matrix, token -> (atom positions, coefficients))."""
            donor = rng.standard_normal((donor_vocab + extra_donor_rows, hidden_d)).astype(np.float32)
            plan = {}
            for t in self.approx:
                chosen = rng.choice(len(self.atoms), size=sparsity, replace=False)
                coef = rng.uniform(0.5, 1.5, sparsity) * rng.choice([-1.0, 1.0], sparsity)
                donor[t] = (coef @ donor[[self.atoms[c] for c in chosen]].astype(np.float64)).astype(np.float32)
                plan[t] = (chosen, coef)
            return donor, plan

        self.donor_embed, embed_plan = planted(hidden_donor)
        self.base_dtype = base_dtype

        def base_matrix():
            """(values, raw elements as written): BF16 values are those the bf16 patterns hold."""
            values = rng.standard_normal((base_vocab + extra_base_rows, hidden_base)).astype(np.float32)
            if base_dtype == "F32":
                return values, values
            bits = f32_to_bf16_bits(values)
            return bf16_bits_to_f32(bits), bits

        self.base_embed, self.base_embed_raw = base_matrix()
        self.expected_embed = self._apply(embed_plan, self.base_embed)
        if donor_tied:
            self.donor_head, head_plan = None, embed_plan
        else:
            self.donor_head, head_plan = planted(hidden_donor)  # its own coefficients: the output fit is separate
        if base_tied:
            self.base_head = self.base_head_raw = self.expected_head = None
        else:
            self.base_head, self.base_head_raw = base_matrix()
            self.expected_head = self._apply(head_plan, self.base_head)

        self.other = rng.standard_normal((4, hidden_base)).astype(np.float32)
        self.base_dir = os.path.join(root, "base")
        self.donor_dir = os.path.join(root, "donor")
        base_tensors = {"model.embed_tokens.weight": (base_dtype, self.base_embed_raw),
                        "model.layers.0.mlp.weight": ("F32", self.other)}
        if not base_tied:
            base_tensors["lm_head.weight"] = (base_dtype, self.base_head_raw)
        donor_tensors = {"model.embed_tokens.weight": ("F32", self.donor_embed)}
        if not donor_tied:
            donor_tensors["lm_head.weight"] = ("F32", self.donor_head)
        base_config = {"model_type": "llama", "vocab_size": base_vocab + extra_base_rows, "hidden_size": hidden_base,
                       "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": base_tied}
        donor_config = {"model_type": "llama", "vocab_size": donor_vocab + extra_donor_rows,
                        "hidden_size": hidden_donor, "bos_token_id": donor_vocab - 3, "eos_token_id": [donor_vocab - 2]}
        write_model_dir(self.base_dir, base_tensors, extra_files={"config.json": json.dumps(base_config),
                                                                  "generation_config.json": json.dumps({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.7})})
        write_model_dir(self.donor_dir, donor_tensors, extra_files={"config.json": json.dumps(donor_config)})
        for src_dir, dst_dir in ((base_tok_dir, self.base_dir), (donor_tok_dir, self.donor_dir)):
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                if os.path.exists(os.path.join(src_dir, name)):
                    shutil.copyfile(os.path.join(src_dir, name), os.path.join(dst_dir, name))

    def _apply(self, plan, base_matrix):
        """The planted coefficients applied to the atoms' base rows: token -> expected new row (float64)."""
        return {t: coef @ base_matrix[[self.shared[self.atoms[c]][0] for c in chosen]].astype(np.float64)
                for t, (chosen, coef) in plan.items()}
