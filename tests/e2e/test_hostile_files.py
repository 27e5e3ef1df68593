"""Hostile filesystem objects in inputs (issue 10): a FIFO or a device where a
checkpoint file is expected must not hang soupkit; a symbolic link in a model
directory must not carry a file from outside it into the output (a crafted
directory could otherwise publish ~/.ssh/id_rsa inside a merged model), while
Hugging Face's cache layout, whose snapshot files are links into the
repository's blobs/, keeps working; a text file soupkit parses whole is
refused above its size cap before anything is allocated."""
import os
import shutil
import unittest

import numpy as np

from soupkit_testlib import read_checkpoint, run_soupkit, run_with_peak_rss, write_model_dir, write_safetensors
from test_bad_input import BadInputBase


def tensors():
    rng = np.random.default_rng(3)
    return {"a.weight": ("F32", rng.standard_normal((8, 4)).astype(np.float32)),
            "b.weight": ("F16", rng.standard_normal(6).astype(np.float16))}


class SpecialFiles(BadInputBase):
    def test_fifo_or_device_as_a_checkpoint_file_is_refused_without_hanging(self):
        model = self.path("fifo-model")
        write_model_dir(model, tensors(), extra_files={"config.json": "{}"})
        os.remove(os.path.join(model, "model.safetensors"))
        os.mkfifo(os.path.join(model, "model.safetensors"))  # nobody ever writes to it
        fifo_file = self.path("pipe.safetensors")
        os.mkfifo(fifo_file)
        sharded = self.path("fifo-index")
        write_model_dir(sharded, tensors(), shard_bytes=64)
        os.remove(os.path.join(sharded, "model.safetensors.index.json"))
        os.mkfifo(os.path.join(sharded, "model.safetensors.index.json"))
        for src, named in ((model, "model.safetensors"), (fifo_file, "pipe.safetensors"),
                           (sharded, "model.safetensors.index.json"), ("/dev/zero", "/dev/zero")):
            with self.subTest(src=src):
                out = self.path("out-%s" % os.path.basename(src))
                proc = self.run_soupkit(["convert", src, out])  # a hang is a failure after TIMEOUT
                self.assert_failed(proc, [named], ["not a regular file", "not a model directory"])
                self.assert_no_output(out)


class SymbolicLinks(BadInputBase):
    def make_model(self, name):
        model = self.path(name)
        write_model_dir(model, tensors(), extra_files={"config.json": '{"model_type": "test"}'})
        return model

    def test_link_to_a_file_outside_the_directory_is_refused_and_not_copied(self):
        secret = self.path("secret.txt")
        with open(secret, "w") as f:
            f.write("private key")
        model = self.make_model("linked-carried")
        os.remove(os.path.join(model, "config.json"))
        os.symlink(secret, os.path.join(model, "config.json"))
        shard_model = self.make_model("linked-shard")
        outside = self.path("elsewhere.safetensors")
        shutil.move(os.path.join(shard_model, "model.safetensors"), outside)
        os.symlink(outside, os.path.join(shard_model, "model.safetensors"))
        for model, named in ((model, "config.json"), (shard_model, "model.safetensors")):
            for kind in ("dir", "h5"):
                with self.subTest(model=model, kind=kind):
                    out = self.out_path(kind, os.path.basename(model))
                    proc = self.run_soupkit(["convert", model, out])
                    self.assert_failed(proc, [named], ["outside the model directory"])
                    self.assert_no_output(out)

    def test_links_inside_the_directory_and_the_hugging_face_cache_layout_work(self):
        # <cache>/models--org--name/snapshots/<rev>/FILE -> ../../blobs/<hash>, as huggingface_hub makes it.
        repo = self.path("hub", "models--org--tiny")
        snapshot = os.path.join(repo, "snapshots", "0123abcd")
        staging = self.make_model("staging")
        os.makedirs(os.path.join(repo, "blobs"))
        os.makedirs(snapshot)
        for i, name in enumerate(sorted(os.listdir(staging))):
            blob = os.path.join(repo, "blobs", "blob%d" % i)
            shutil.copy(os.path.join(staging, name), blob)
            os.symlink(os.path.join("..", "..", "blobs", "blob%d" % i), os.path.join(snapshot, name))
        # A link to a file of the directory itself is also fine.
        os.symlink("config.json", os.path.join(snapshot, "config.alias.json"))
        out = self.path("from-cache")
        run_soupkit(["convert", snapshot, out])
        got, _ = read_checkpoint(out)
        for name, (dtype, want) in tensors().items():
            self.assertEqual(got[name][0], dtype)
            self.assertEqual(got[name][1].tobytes(), want.tobytes(), name)
        with open(os.path.join(out, "config.json")) as f:
            self.assertEqual(f.read(), '{"model_type": "test"}')
        self.assertTrue(os.path.isfile(os.path.join(out, "config.alias.json")))


class TextFileCap(BadInputBase):
    def test_huge_index_is_refused_before_it_is_read(self):
        model = self.path("huge-index")
        write_model_dir(model, tensors(), shard_bytes=64)
        index = os.path.join(model, "model.safetensors.index.json")
        with open(index, "r+b") as f:
            f.truncate(300 << 20)  # sparse: 300 MiB declared, nothing stored
        proc, peak = run_with_peak_rss(["inspect", model])
        self.assert_failed(proc, ["model.safetensors.index.json"], ["MiB soupkit reads into memory"])
        self.assertLess(peak, 200 << 20, "the index was read into memory")


if __name__ == "__main__":
    unittest.main()
