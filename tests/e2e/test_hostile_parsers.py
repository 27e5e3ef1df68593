"""Hostile text inputs (issue 10): safetensors headers, index.json, tokenizer
files, model configs, YAML job files and greedy soup's --scores / --log are
refused with exit status 1 and one `soupkit: error:` line naming the file,
never a signal, a raw library message or gigabytes of memory. Also: `--` ends
options, so paths starting with '-' can be given."""
import json
import os
import subprocess
import unittest

import numpy as np

from soupkit_testlib import SOUPKIT, run_soupkit, run_with_peak_rss, write_model_dir, write_safetensors
from test_bad_input import TIMEOUT, BadInputBase, write_raw_safetensors
from transplant_fixtures import WORDS, byte_level_tokenizer, vocab_size

DEEP = 100_000  # nesting that overflowed the stack of recursive parsers
DEEP_ARRAY = "[" * DEEP + "]" * DEEP
DEEP_WORDS = ["nested deeper", "too deep"]
MEMORY_LIMIT_KB = 400 * 1024  # far above soupkit's ~60 MB start-up, far below what the bad inputs used to take
RAW_LIBRARY_TEXT = ["json.exception", "yaml-cpp", "bad conversion", "bad_alloc"]


def measured_run(args, cwd=None):
    """Runs soupkit on one rank; returns (CompletedProcess, peak resident KB of that process)."""
    proc, peak_bytes = run_with_peak_rss(args, timeout=TIMEOUT, cwd=cwd)
    return proc, peak_bytes // 1024


class HostileBase(BadInputBase):
    def write(self, name, text):
        """self.tmp/name holding text; returns its path."""
        path = self.path(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def assert_refused(self, proc, names, words):
        self.assert_failed(proc, names, words)
        for text in RAW_LIBRARY_TEXT:
            self.assertNotIn(text, proc.stderr)

    def assert_refused_small(self, args, names, words):
        """Refused (as assert_refused) on one rank, within MEMORY_LIMIT_KB."""
        proc, peak_kb = measured_run(args)
        self.assert_refused(proc, names, words)
        self.assertLess(peak_kb, MEMORY_LIMIT_KB, "peak memory %d KB" % peak_kb)


class HostileSafetensors(HostileBase):
    def header(self, shape="[2]", dtype='"F32"', name="w"):
        return ('{"%s": {"dtype": %s, "shape": %s, "data_offsets": [0, 8]}}' % (name, dtype, shape)).encode()

    def test_deeply_nested_shape(self):
        src = self.path("deep.safetensors")
        write_raw_safetensors(src, self.header(shape=DEEP_ARRAY), b"\0" * 8)
        self.check_fails(src, [src], DEEP_WORDS, inspect=True)

    def test_huge_name_and_dtype_are_cut_in_the_message(self):
        src = self.path("long.safetensors")
        write_raw_safetensors(src, self.header(dtype='"%s"' % ("D" * 200_000), name="n" * 200_000), b"\0" * 8)
        proc = self.run_soupkit(["inspect", src])
        self.assert_refused(proc, [src, "unknown dtype", "bytes)"], ["unknown dtype"])
        self.assertLess(len(proc.stderr), 2000, "the message quotes the whole input")

    def test_shape_dump_is_cut_in_the_message(self):
        src = self.path("shape.safetensors")
        write_raw_safetensors(src, self.header(shape="[" + ",".join(['"x"'] * 50_000) + "]"), b"\0" * 8)
        proc = self.run_soupkit(["inspect", src])
        self.assert_refused(proc, [src, "'w'"], ["not a non-negative integer"])
        self.assertLess(len(proc.stderr), 2000)

    def test_nul_in_a_name_is_shown_not_cut(self):
        src = self.path("nul.safetensors")
        write_raw_safetensors(src, self.header(dtype='"F99"', name="a\\u0000b"), b"\0" * 8)
        proc = self.run_soupkit(["inspect", src])
        self.assert_refused(proc, [src, "a\\x00b", "F99"], ["unknown dtype"])

    def test_json_errors_do_not_show_library_ids(self):
        # nlohmann's "[json.exception.out_of_range.406]" and the like mean nothing to a user.
        cases = {"overflow": self.header(shape="[1e400]"), "nuls": b"\0" * 16, "empty": b""}
        for tag, header in cases.items():
            with self.subTest(tag):
                src = self.path("%s.safetensors" % tag)
                write_raw_safetensors(src, header, b"\0" * 8)
                self.check_fails(src, [src, "header"], ["not valid JSON"], inspect=True)
                self.assert_refused(self.run_soupkit(["inspect", src]), [src], ["not valid JSON"])

    def test_keys_given_twice_are_refused(self):
        # Readers disagree on which of two equal keys counts (nlohmann keeps the last, others the first).
        one = '"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'
        cases = {"tensor": '{"w": {%s}, "w": {%s}}' % (one, one),
                 "metadata": '{"__metadata__": {"a": "1"}, "__metadata__": {"a": "2"}, "w": {%s}}' % one,
                 "field": '{"w": {%s, "shape": [1]}}' % one}
        for tag, header in cases.items():
            with self.subTest(tag):
                src = self.path("twice-%s.safetensors" % tag)
                write_raw_safetensors(src, header.encode(), b"\0" * 8)
                self.check_fails(src, [src, "appears twice"], ["appears twice"], inspect=True)

    def test_byte_order_mark_is_refused(self):
        src = self.path("bom.safetensors")
        write_raw_safetensors(src, b"\xef\xbb\xbf" + self.header(), b"\0" * 8)
        self.check_fails(src, [src], ["byte-order mark"], inspect=True)


class HostileIndex(HostileBase):
    def model_with_index(self, index_text):
        src = self.path("sharded")
        write_model_dir(src, {"w": ("F32", np.zeros(4, np.float32))}, shard_bytes=1)
        self.write(os.path.join(src, "model.safetensors.index.json"), index_text)
        return src

    def test_deeply_nested_index(self):
        src = self.model_with_index('{"weight_map": %s}' % DEEP_ARRAY)
        self.check_fails(src, [os.path.join(src, "model.safetensors.index.json")], DEEP_WORDS, kinds=("h5",),
                         inspect=True)

    def test_shard_names_outside_the_directory(self):
        for shard in ["../model-00001-of-00001.safetensors", ".", "a\\u0000b.safetensors", ""]:
            with self.subTest(shard=shard):
                src = self.model_with_index('{"weight_map": {"w": "%s"}}' % shard)
                proc = self.run_soupkit(["inspect", src])
                self.assert_refused(proc, [os.path.join(src, "model.safetensors.index.json"), "'w'"],
                                    ["not a file in the directory"])


class HostileTransplant(HostileBase):
    def setUp(self):
        super().setUp()
        self.tok, self.cfg = byte_level_tokenizer(WORDS)
        rows = vocab_size(self.tok)
        self.embed = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
        self.base = self.model("base", self.tok)

    def model(self, name, tok, config=None):
        path = self.path(name)
        files = {"tokenizer.json": tok if isinstance(tok, str) else json.dumps(tok),
                 "tokenizer_config.json": json.dumps(self.cfg),
                 "config.json": config if config is not None else json.dumps({"vocab_size": 1})}
        write_model_dir(path, {"model.embed_tokens.weight": ("F32", self.embed)}, extra_files=files)
        return path

    def transplant(self, donor, tag="out"):
        out = self.path(tag)
        return ["transplant", "--base", self.base, "--donor", donor, "--out", out, "--k", "4"], out

    def check_donor(self, tok, names, words):
        donor = self.model("donor", tok)
        args, out = self.transplant(donor)
        self.assert_refused_small(args, [os.path.join(donor, "tokenizer.json"), *names], words)
        self.assert_no_output(out)

    def with_vocab(self, **changes):
        vocab = dict(self.tok["model"]["vocab"])
        vocab.update(changes)
        return dict(self.tok, model=dict(self.tok["model"], vocab=vocab))

    def test_special_tokens_of_the_wrong_type_are_refused(self):
        # They used to be taken as absent: "0 special by role", exit 0.
        for key, value in (("bos_token", {"content": 5}), ("eos_token", [1, 2]), ("pad_token", 7)):
            with self.subTest(key=key):
                donor = self.model("donor-%s" % key, self.tok)
                with open(os.path.join(donor, "special_tokens_map.json"), "w") as f:
                    json.dump({key: value}, f)
                args, out = self.transplant(donor, "out-%s" % key)
                self.assert_refused_small(args, [os.path.join(donor, "special_tokens_map.json"), key], ["not a token"])
                self.assert_no_output(out)
        # null is how Hugging Face writes "no such token".
        donor = self.model("donor-null", self.tok)
        with open(os.path.join(donor, "special_tokens_map.json"), "w") as f:
            json.dump({"pad_token": None}, f)
        args, out = self.transplant(donor, "out-null")
        run_soupkit(args)

    def test_deeply_nested_normalizer(self):
        text = json.dumps(dict(self.tok, normalizer=None)).replace('"normalizer": null', '"normalizer": ' + DEEP_ARRAY)
        self.check_donor(text, [], DEEP_WORDS)

    def test_huge_id_allocates_nothing(self):
        # A 4 KB tokenizer.json with one id of 1e8 took 7 GB; 2^31 ended in std::bad_alloc.
        for big in (10**8, 2**31, 2**63 + 5):
            with self.subTest(id=big):
                tok = {"model": {"type": "BPE", "vocab": {"a": 0, "b": big}, "merges": []}}
                self.check_donor(tok, ["'b'", str(big)], ["outside", "out of range"])

    def test_bad_ids(self):
        cases = [("negative", self.with_vocab(neg=-1), ["'neg'", "-1"], ["outside"]),
                 ("float", self.with_vocab(flt=3.5), ["'flt'", "3.5"], ["not an integer"]),
                 ("string", self.with_vocab(txt="7"), ["'txt'", '"7"'], ["not an integer"]),
                 ("duplicate", self.with_vocab(dup=5), ["'dup'", "id 5"], ["both have id"])]
        added = [dict(a, id=self.tok["added_tokens"][0]["id"]) for a in self.tok["added_tokens"]]
        cases.append(("duplicate added", dict(self.tok, added_tokens=added), ["added_tokens", "<|end_of_text|>"],
                      ["both have id"]))
        for label, tok, names, words in cases:
            with self.subTest(label):
                self.check_donor(tok, names, words)

    def test_wrong_types_name_the_file(self):
        bad_flag = dict(self.tok, model=dict(self.tok["model"], byte_fallback="yes"))
        self.check_donor(bad_flag, ["byte_fallback", '"yes"'], ["not true or false"])
        bad_type = dict(self.tok, pre_tokenizer={"type": 5, "x": [{"type": []}]})
        donor = self.model("donor", bad_type)
        args, out = self.transplant(donor, "out-ok")
        run_soupkit(args)  # a component's "type" that is not a string is simply no known component
        bad_added = dict(self.tok, added_tokens=[{"id": 1, "content": 7}])
        self.check_donor(bad_added, ["added_tokens[0]"], ["expected an object"])

    def test_config_that_is_not_an_object(self):
        base = self.model("base-list-config", self.tok, config="[1, 2]")
        self.base = base
        args, out = self.transplant(self.model("donor", self.tok))
        self.assert_refused_small(args, [os.path.join(base, "config.json")], ["expected a JSON object"])
        self.assert_no_output(out)


class HostileJobFiles(HostileBase):
    def test_alias_bomb(self):
        # 130 KB: one 12 KB scalar aliased 10,000 times took 3.9 GB.
        text = "merge_method: uniform_soup\nout_path: &big %s\nmodels: [%s]\n" % ("x" * 12_000,
                                                                                 ", ".join(["*big"] * 10_000))
        path = self.write("bomb.yaml", text)
        self.assert_refused_small(["run", path, "--dry-run"], [path, "line 3"], ["alias"])

    def test_deep_nesting(self):
        cases = {"flow": "merge_method: monosoup\nparameters: {x: %s}\n" % DEEP_ARRAY,
                 "block": "merge_method: monosoup\nparameters:\n" + "".join(" " * i + "- \n" for i in range(1000)),
                 "compact": "merge_method: monosoup\nmodels:\n" + "- " * 50_000 + "x\n"}
        for label, text in cases.items():
            with self.subTest(label):
                path = self.write("deep-%s.yaml" % label, text)
                self.assert_refused_small(["run", path, "--dry-run"], [path], DEEP_WORDS)

    def test_large_file(self):
        path = self.write("large.yaml", "merge_method: monosoup\n" + "#" * (2 << 20) + "\n")
        self.assert_refused_small(["run", path], [path], ["too large"])

    def test_values_yaml_cpp_cannot_convert(self):
        cases = [("? [a, b]\n: c\nmerge_method: monosoup\n", ["line 1"], ["not a name"]),
                 ("merge_method: uniform_soup\nmodels:\n  - model: a\n    parameters: [1]\n",
                  ["models[0].parameters", "line 4"], ["expected 'weight"]),
                 ("merge_method: monosoup\nbase_model: a\nmodels: [b]\nparameters: {? [x]: 1}\n",
                  ["parameters", "line 4"], ["not a name"]),
                 ("merge_method: monosoup\nmerge_method: convert\n", ["merge_method", "line 2"], ["twice"])]
        for i, (text, names, words) in enumerate(cases):
            with self.subTest(text=text):
                path = self.write("conv-%d.yaml" % i, text)
                self.assert_refused_small(["run", path, "--dry-run"], [path, *names], words)


class HostileGreedyFiles(HostileBase):
    def test_deep_scores_and_log(self):
        a, b = self.path("a"), self.path("b")
        for p in (a, b):
            write_model_dir(p, {"w": ("F32", np.ones(4, np.float32))})
        scores, log = (self.write(name, '{"x": %s}' % DEEP_ARRAY) for name in ("scores.json", "greedy.json"))
        out = self.path("soup")
        common = ["soup", "greedy", "--out", out, "--eval-cmd", "true {model}"]
        self.assert_refused_small([*common, "--scores", scores, a, b], ["--scores", scores], DEEP_WORDS)
        # A deep file at --log is not a soupkit log, so it is refused before it would be resumed from.
        self.assert_refused_small([*common, "--log", log, "--resume", a, b], ["--log", log],
                                  ["not a soupkit greedy soup log"])
        self.assert_no_output(out)


class EndOfOptions(HostileBase):
    """`--` ends options: outputs and inputs whose names start with '-' (run in self.tmp)."""

    def run_here(self, args):
        return run_soupkit(args, cwd=self.tmp)

    def test_every_command_takes_dash_paths(self):
        self.run_here(["example", "--quiet", "--", "-ex"])
        base, finetuned = os.path.join("-ex", "base"), os.path.join("-ex", "finetuned")
        self.run_here(["convert", "--quiet", "--", base, "-c.safetensors"])
        self.assertIn("total:", self.run_here(["inspect", "--", "-c.safetensors"]).stdout)
        self.run_here(["soup", "uniform", "--quiet", "--out", "-s.h5", "--", base, finetuned])
        self.run_here(["monosoup", "--quiet", "--base", base, "--finetuned", finetuned, "--out", "-m.h5"])
        for out in ("-c.safetensors", "-s.h5", "-m.h5"):
            self.assertTrue(os.path.isfile(self.path(out)), out)

    def test_run_with_dash_job_and_dash_paths(self):
        self.run_here(["example", "--quiet", "ex"])
        os.rename(self.path("ex", "base"), self.path("-base"))
        self.write("-job.yaml", "merge_method: convert\nmodels: [-base]\nout_path: -converted.h5\n")
        self.run_here(["run", "--", "-job.yaml", "--quiet"])
        self.assertTrue(os.path.isfile(self.path("-converted.h5")))


if __name__ == "__main__":
    unittest.main()
