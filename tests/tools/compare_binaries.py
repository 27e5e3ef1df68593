#!/usr/bin/env python3
"""Runs the same jobs with two soupkit binaries and compares their outputs.

For refactors that must not change a byte: `compare_binaries.py OLD NEW`
runs convert, soups, MonoSoup (one rank, a rank each, and on a ScaLAPACK
grid), a job file and the example on both binaries, on 1 and 2 ranks, and
compares every output: safetensors files and model directories byte for
byte, HDF5 files dataset by dataset with h5py (the files themselves hold
creation times). Exit status 0 when everything is identical.
"""
import filecmp
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OPENBLAS_NUM_THREADS="1",
               HDF5_USE_FILE_LOCKING="FALSE")


def run(binary, args, ranks, cwd):
    cmd = [binary, *args]
    if ranks:
        cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, cwd=cwd, env=MPI_ENV, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{binary} {' '.join(args)} failed:\n{proc.stderr}")


def jobs(work):
    d = f"{work}/demo"
    mono = ["monosoup", "--base", f"{d}/base", "--finetuned", f"{d}/finetuned"]
    return [
        ("convert.safetensors", ["convert", f"{d}/finetuned", "{out}"], [None, 2]),
        ("convert-bf16", ["convert", f"{d}/finetuned", "{out}", "--dtype", "BF16"], [2]),
        ("convert-small.h5", ["convert", f"{d}/base", "{out}", "--memory-budget", "4MB"], [2]),
        ("soup.safetensors", ["soup", "uniform", "--out", "{out}", "--weights", "3,1", f"{d}/base", f"{d}/finetuned"],
         [None, 2]),
        ("soup-f32acc", ["soup", "uniform", "--out", "{out}", "--accumulate", "F32", "--out-dtype", "F16",
                         "--memory-budget", "4MB", f"{d}/base", f"{d}/finetuned"], [3]),
        ("mono", [*mono, "--out", "{out}"], [None, 2]),
        ("mono-grid.h5", [*mono, "--out", "{out}", "--scalapack-min-dim", "1"], [2]),
        ("mono-variance.safetensors", [*mono, "--out", "{out}", "--mode", "variance", "--out-dtype", "BF16"], [3]),
    ]


def same_h5(a, b):
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        names = []
        x.visit(names.append)
        other = []
        y.visit(other.append)
        if names != other:
            return False
        for n in names:
            if dict(x[n].attrs).keys() != dict(y[n].attrs).keys():
                return False
            for k in x[n].attrs:
                if not np.array_equal(np.asarray(x[n].attrs[k]), np.asarray(y[n].attrs[k])):
                    return False
            if isinstance(x[n], h5py.Dataset):
                if x[n].dtype != y[n].dtype or x[n][...].tobytes() != y[n][...].tobytes():
                    return False
    return True


def same(a, b):
    if a.endswith(".h5"):
        return same_h5(a, b)
    if os.path.isdir(a):
        files = sorted(os.listdir(a))
        return files == sorted(os.listdir(b)) and all(filecmp.cmp(f"{a}/{f}", f"{b}/{f}", shallow=False) for f in files)
    return filecmp.cmp(a, b, shallow=False)


def main():
    old, new = map(os.path.abspath, sys.argv[1:3])
    failures = 0
    with tempfile.TemporaryDirectory() as work:
        run(new, ["example", f"{work}/demo"], None, work)
        for name, args, rank_counts in jobs(work):
            for ranks in rank_counts:
                outs = []
                for tag, binary in (("old", old), ("new", new)):
                    out = f"{work}/{tag}-{ranks or 1}-{name}"
                    run(binary, [a.replace("{out}", out) for a in args], ranks, work)
                    outs.append(out)
                ok = same(*outs)
                failures += not ok
                print(f"{'same' if ok else 'DIFFERENT'}: {name} on {ranks or 1} rank(s)")
    print(f"{failures} difference(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
