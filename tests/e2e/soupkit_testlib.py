"""Shared helpers for soupkit's end-to-end tests.

These tests run the real `soupkit` binary (path in $SOUPKIT, MPI launcher in
$SOUPKIT_MPIRUN, both set by CTest) and check its outputs with an independent
implementation: this module writes and reads safetensors itself, and h5py /
numpy read the HDF5 outputs.
"""
import json
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

SOUPKIT = os.environ.get("SOUPKIT", os.path.join(os.path.dirname(__file__), "../../build/bin/soupkit"))
MPIRUN = shlex.split(os.environ.get("SOUPKIT_MPIRUN", "mpirun --oversubscribe --bind-to none"))

# safetensors dtype name -> numpy dtype used to hold the raw elements.
# BF16 has no numpy type: it is held as its uint16 bit pattern.
NP_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": np.uint8, "F8_E5M2": np.uint8,
}


def bf16_bits_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(values):
    """Round float32 to bf16 (nearest, ties to even), as bit patterns."""
    u = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    s16, one = np.uint64(16), np.uint64(1)
    rounded = ((u + np.uint64(0x7FFF) + ((u >> s16) & one)) >> s16).astype(np.uint16)
    nan = np.isnan(np.asarray(values, dtype=np.float32))
    return np.where(nan, ((u >> s16) | np.uint64(0x40)).astype(np.uint16), rounded)


def f64_to_bf16_bits(x):
    """float64 rounded once to bf16 (nearest, ties to even), as bit patterns (finite inputs)."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    _, e = np.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    quantum = np.ldexp(1.0, np.maximum(e - 1, -126) - 7)
    rounded = np.rint(a / quantum) * quantum  # exact in float32
    bits = (rounded.astype(np.float32).view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    return bits | np.where(np.signbit(x), np.uint16(0x8000), np.uint16(0))


def as_float64(dtype, array):
    """Values of a raw array of a float safetensors dtype, as float64."""
    if dtype == "BF16":
        return bf16_bits_to_f32(array).astype(np.float64)
    return np.asarray(array).astype(np.float64)


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> (dtype name, numpy array of the raw elements)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array, dtype=NP_DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(np.shape(array)), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Returns (dict name -> (dtype, raw numpy array), metadata)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    metadata = header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = blob[8 + n + begin:8 + n + end]
        out[name] = (info["dtype"], np.frombuffer(raw, dtype=NP_DTYPES[info["dtype"]]).reshape(info["shape"]))
    return out, metadata


def read_checkpoint(path):
    """Reads a .safetensors file or a model directory (sharded or not) with this module's reader."""
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        tensors, metadata = {}, None
        for name in files:
            part, meta = read_safetensors(os.path.join(path, name))
            tensors.update(part)
            metadata = metadata or meta
        return tensors, metadata
    return read_safetensors(path)


def write_model_dir(path, tensors, shard_bytes=None, metadata=None, extra_files=None):
    """A Hugging Face model directory; sharded when shard_bytes is given."""
    os.makedirs(path, exist_ok=True)
    if shard_bytes is None:
        write_safetensors(os.path.join(path, "model.safetensors"), tensors, metadata)
    else:
        shards, current, size = [], {}, 0
        for name, value in tensors.items():
            nbytes = np.asarray(value[1]).nbytes
            if current and size + nbytes > shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = value
            size += nbytes
        shards.append(current)
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
            write_safetensors(os.path.join(path, fname), shard, metadata)
            weight_map.update({name: fname for name in shard})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    for name, text in (extra_files or {}).items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)


def run_soupkit(args, ranks=None, check=True, timeout=600, env=None, cwd=None):
    """Runs soupkit (under mpirun with `ranks` ranks if given), with extra
    environment variables `env`. Returns CompletedProcess."""
    cmd = ([*MPIRUN, "-n", str(ranks)] if ranks else []) + [SOUPKIT, *map(str, args)]
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError("soupkit failed (%d): %s\nstdout:\n%s\nstderr:\n%s"
                             % (proc.returncode, " ".join(cmd), proc.stdout, proc.stderr))
    return proc


def run_with_peak_rss(args, timeout=120, cwd=None):
    """Runs soupkit alone (no mpirun) under /usr/bin/time; returns (CompletedProcess, its peak resident bytes).
    (Not os.wait4 or RUSAGE_CHILDREN: Linux carries the high-water mark of the forking process, this Python,
    into the child, and RUSAGE_CHILDREN is the largest of every child so far.)"""
    with tempfile.TemporaryDirectory(prefix="soupkit-rss-") as tmpdir:
        report = os.path.join(tmpdir, "rss")
        cmd = ["/usr/bin/time", "-q", "-f", "%M", "-o", report, SOUPKIT, *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                              env=dict(os.environ, TMPDIR=tmpdir))
        with open(report) as f:
            peak_kib = int(f.read().split()[-1])
    return subprocess.CompletedProcess(proc.args[6:], proc.returncode, proc.stdout, proc.stderr), peak_kib * 1024


class TempDirTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="soupkit-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def assert_same_tensors(self, got_path, expected):
        """The checkpoint at got_path holds exactly `expected` (name -> (dtype, raw)), bit for bit."""
        got, _ = read_checkpoint(got_path)
        self.assertEqual(sorted(got), sorted(expected))
        for name, (dtype, raw) in expected.items():
            self.assertEqual(got[name][0], dtype, name)
            self.assertEqual(got[name][1].shape, np.shape(raw), name)
            np.testing.assert_array_equal(got[name][1], raw, err_msg=name)
