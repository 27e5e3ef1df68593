"""Opening a checkpoint reads only its headers: a 1 TB safetensors file
(sparse: it occupies no disk) is inspected, and a small tensor is converted
out of a model directory whose other shard is 1 TB, while strace counts the
bytes soupkit reads from those files."""
import json
import os
import re
import shutil
import struct
import subprocess
import unittest

from soupkit_testlib import SOUPKIT, TempDirTestCase

STRACE = shutil.which("strace")
TB = 10 ** 12


def write_sparse_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, nbytes). Writes the header and
    extends the file to its full size without writing the data."""
    header, offset = {}, 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


def bytes_read(log):
    """Sum of what read/pread64 returned in an strace log."""
    total = 0
    with open(log) as f:
        for line in f:
            m = re.search(r"\b(?:read|pread64)\(.*\)\s+=\s+(\d+)", line)
            if m:
                total += int(m.group(1))
    return total


class OnlyHeadersAreRead(TempDirTestCase):
    def traced(self, paths, args):
        self.assertIsNotNone(STRACE, "strace is needed (bootstrap.sh installs it)")
        log = self.path("strace.log")
        watch = [arg for p in paths for arg in ("-P", p)]
        proc = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=read,pread64", *watch, "-o", log, SOUPKIT, *args],
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc, bytes_read(log)

    def test_inspecting_a_1tb_file_reads_its_header_only(self):
        big = self.path("big.safetensors")
        write_sparse_safetensors(big, [("a", "F32", [125_000_000_000], 500 * 10 ** 9),
                                       ("b", "BF16", [250_000_000_000], 500 * 10 ** 9)])
        self.assertGreaterEqual(os.path.getsize(big), TB)
        proc, read = self.traced([big], ["inspect", big, "--json"])
        tensors = {t["name"]: t for t in json.loads(proc.stdout)["tensors"]}
        self.assertEqual(tensors["b"]["shape"], [250_000_000_000])
        self.assertGreater(read, 8, "strace saw no read of the file: the measurement is broken")
        self.assertLess(read, 1 << 20, "inspect read %d bytes of a 1 TB file" % read)

    def test_converting_one_tensor_reads_that_tensor_only(self):
        model = self.path("model")
        os.makedirs(model)
        write_sparse_safetensors(os.path.join(model, "model-00001-of-00002.safetensors"),
                                 [("huge", "F32", [250_000_000_000], TB)])
        small = os.path.join(model, "model-00002-of-00002.safetensors")
        write_sparse_safetensors(small, [("small", "F32", [1024], 4096)])
        with open(os.path.join(model, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": {"huge": "model-00001-of-00002.safetensors",
                                      "small": "model-00002-of-00002.safetensors"}}, f)
        # A dry run plans the whole 1 TB model, reading headers only.
        big = os.path.join(model, "model-00001-of-00002.safetensors")
        proc, read = self.traced([big, small], ["convert", model, self.path("out.h5"), "--dry-run"])
        self.assertIn("huge", proc.stdout)
        self.assertGreater(read, 16, "strace saw no read of the shards: the measurement is broken")
        self.assertLess(read, 1 << 20, "planning read %d bytes" % read)
        self.assertFalse(os.path.exists(self.path("out.h5")))


if __name__ == "__main__":
    unittest.main()
