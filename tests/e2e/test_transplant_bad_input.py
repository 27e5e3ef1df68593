"""Bad inputs to `soupkit transplant` fail cleanly: exit status 1, one error
line naming the file (and tensor) and the problem, nothing at the output path,
on 1 and several ranks."""
import json
import os
import unittest

import numpy as np

from soupkit_testlib import write_model_dir, write_safetensors
from test_bad_input import BadInputBase
from transplant_fixtures import WORDS, byte_level_tokenizer, sentencepiece_tokenizer, vocab_size


class TestTransplantBadInput(BadInputBase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.donor_tok, self.donor_cfg = byte_level_tokenizer(WORDS)
        self.base_tok, self.base_cfg = sentencepiece_tokenizer(WORDS[:20])
        self.donor_rows, self.base_rows = vocab_size(self.donor_tok), vocab_size(self.base_tok)
        self.donor_embed = rng.standard_normal((self.donor_rows, 16)).astype(np.float32)
        self.base_embed = rng.standard_normal((self.base_rows, 8)).astype(np.float32)

    def model(self, name, tensors, tok, cfg, skip=()):
        path = self.path(name)
        files = {"tokenizer.json": json.dumps(tok) if isinstance(tok, dict) else tok,
                 "tokenizer_config.json": json.dumps(cfg), "config.json": json.dumps({"vocab_size": 1})}
        write_model_dir(path, tensors, extra_files={k: v for k, v in files.items() if k not in skip})
        return path

    def good_base(self, **kw):
        return self.model("base", {"model.embed_tokens.weight": ("F32", self.base_embed)}, self.base_tok, self.base_cfg, **kw)

    def good_donor(self, **kw):
        return self.model("donor", {"model.embed_tokens.weight": ("F32", self.donor_embed)}, self.donor_tok,
                          self.donor_cfg, **kw)

    def check(self, base, donor, names, words, extra=(), ranks_list=(None, 2)):
        jobs, outs = [], []
        for ranks in ranks_list:
            out = self.path("out-%s" % (ranks or 1))
            outs.append(out)
            jobs.append((["transplant", "--base", base, "--donor", donor, "--out", out, "--k", "4", *extra], ranks))
        for out, proc in zip(outs, self.run_many(jobs)):
            with self.subTest(out=out):
                self.assert_failed(proc, names, words)
                self.assert_no_output(out)

    def test_no_tokenizer_json(self):
        base = self.good_base(skip=("tokenizer.json",))
        self.check(base, self.good_donor(), [base, "tokenizer.json"], ["no tokenizer.json"])

    def test_unsupported_tokenizer_type(self):
        tok = dict(self.donor_tok, model={"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"})
        donor = self.model("donor", {"model.embed_tokens.weight": ("F32", self.donor_embed)}, tok, self.donor_cfg)
        self.check(self.good_base(), donor, [os.path.join(donor, "tokenizer.json"), "WordLevel"],
                   ["unsupported tokenizer model type"])

    def test_malformed_tokenizer_json(self):
        donor = self.model("donor", {"model.embed_tokens.weight": ("F32", self.donor_embed)}, '{"model": ',
                           self.donor_cfg)
        self.check(self.good_base(), donor, [os.path.join(donor, "tokenizer.json")], ["not valid JSON"])

    def test_embedding_not_found(self):
        base = self.model("base", {"encoder.weird.weight": ("F32", self.base_embed)}, self.base_tok, self.base_cfg)
        self.check(base, self.good_donor(), [base, "model.embed_tokens.weight"], ["embedding not found"])

    def test_named_embedding_missing(self):
        base = self.good_base()
        self.check(base, self.good_donor(), [base, "my.embed"], ["no tensor"], extra=["--embed-name", "my.embed"])

    def test_vocab_bigger_than_embedding(self):
        donor = self.model("donor", {"model.embed_tokens.weight": ("F32", self.donor_embed[:100])}, self.donor_tok,
                           self.donor_cfg)
        self.check(self.good_base(), donor, [donor, "model.embed_tokens.weight", str(self.donor_rows)],
                   ["inconsistent sizes"])

    def test_embedding_not_a_matrix(self):
        base = self.model("base", {"model.embed_tokens.weight": ("F32", self.base_embed.reshape(-1))}, self.base_tok,
                          self.base_cfg)
        self.check(base, self.good_donor(), [base, "model.embed_tokens.weight"], ["not \\[tokens, hidden\\]"])

    def test_over_memory_budget(self):
        base = self.good_base()
        self.check(base, self.good_donor(), [base, "model.embed_tokens.weight", "97.66 KiB"],
                   ["over the memory budget"], extra=["--memory-budget", "100KB"])

    def test_nan_in_donor_embedding(self):
        embed = self.donor_embed.copy()
        embed[300, 3] = np.nan  # a row the dictionary or the targets read, whichever rank reads it
        donor = self.model("donor", {"model.embed_tokens.weight": ("F32", embed)}, self.donor_tok, self.donor_cfg)
        self.check(self.good_base(), donor, [donor, "model.embed_tokens.weight", "row 300"], ["NaN or Inf"],
                   ranks_list=(None, 3))


if __name__ == "__main__":
    unittest.main()
