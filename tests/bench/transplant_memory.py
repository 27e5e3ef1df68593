"""Benchmark: peak memory per rank of `soupkit transplant` on 1 and 2 ranks of
one node, where the dictionary dominates (never run by CTest).

Data (transplant_vs_torch.make_models): donor and base 32000 x HIDDEN float32
embeddings under synthetic byte-level tokenizers whose first SHARED pieces
match; the base ties its embeddings, so one matrix is fitted. The
dictionary is SHARED x HIDDEN float32 plus the atoms' SHARED x HIDDEN base
rows: 2 x 30000 x 2048 x 4 B = 492 MB at the defaults.

For each binary given (say the one before and the one after a change) and
each rank count, runs `mpirun -n P /usr/bin/time -v soupkit transplant ...`
and reports per rank:
  - maxrss: /usr/bin/time's "Maximum resident set size" (getrusage). It
    counts every page the process has mapped and touched, shared ones too:
    a rank that reads a node-shared dictionary has all of it in its RSS;
  - peak PSS: the proportional set size (/proc/PID/smaps_rollup, sampled
    every 20 ms): a page shared by n processes counts 1/n in each, so the
    ranks' PSS add up to the node's memory;
  - peak private: Private_Clean + Private_Dirty (same samples): pages no
    other process has mapped (a node-shared page counts as private to the
    rank that filled it until another rank touches it);
  - node peak: the largest sum of the ranks' PSS in one sample, the node's
    memory for the job.

    /usr/bin/python3 tests/bench/transplant_memory.py --soupkit build/bin/soupkit [--soupkit OTHER] \
        [--shared 30000 --new 2000 --hidden 2048 --k 2]
"""
import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transplant_vs_torch import make_models  # noqa: E402

MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none", "OPENBLAS_NUM_THREADS": "1",
           "HDF5_USE_FILE_LOCKING": "FALSE"}


def rollup(pid):
    """(Pss, Private) in bytes of a process, or None once it is gone."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            text = f.read()
    except OSError:
        return None
    field = lambda name: int(re.search(r"^%s:\s+(\d+) kB" % name, text, re.M).group(1)) * 1024
    return field("Pss"), field("Private_Clean") + field("Private_Dirty")


def soupkit_pids(binary):
    pids = []
    for exe in glob.glob("/proc/[0-9]*/exe"):
        try:
            if os.path.realpath(exe) == binary:
                pids.append(int(exe.split("/")[2]))
        except OSError:
            pass
    return pids


def run(binary, ranks, root, k):
    out = os.path.join(root, "out-%d" % ranks)
    shutil.rmtree(out, ignore_errors=True)
    times = os.path.join(root, "time-%d" % ranks)
    shutil.rmtree(times, ignore_errors=True)
    os.makedirs(times)
    rank_cmd = "/usr/bin/time -v -o %s/rank.$OMPI_COMM_WORLD_RANK %s transplant --base %s --donor %s --out %s --k %d" % (
        times, shlex.quote(binary), os.path.join(root, "base"), os.path.join(root, "donor"), out, k)
    cmd = ["mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(ranks), "sh", "-c", rank_cmd]
    peaks = {}  # pid -> [pss, private]
    node = [0]  # the largest sum of the ranks' PSS in one sample: the node's memory
    done = threading.Event()

    def sample():
        while not done.is_set():
            total = 0
            for pid in soupkit_pids(binary):
                r = rollup(pid)
                if r:
                    p = peaks.setdefault(pid, [0, 0])
                    p[0], p[1] = max(p[0], r[0]), max(p[1], r[1])
                    total += r[0]
            node[0] = max(node[0], total)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.time()
    proc = subprocess.run(cmd, env=dict(os.environ, **MPI_ENV), capture_output=True, text=True)
    seconds = time.time() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError("soupkit failed:\n" + proc.stderr[-3000:])
    maxrss = []
    for r in range(ranks):
        with open(os.path.join(times, "rank.%d" % r)) as f:
            maxrss.append(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read()).group(1)) * 1024)
    with open(os.path.join(out, "model.safetensors"), "rb") as f:
        output = f.read()
    return seconds, maxrss, sorted(peaks.values()), node[0], output


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--soupkit", action="append", required=True, help="binary to measure (repeat for several)")
    ap.add_argument("--shared", type=int, default=30000)
    ap.add_argument("--new", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="transplant-memory-")
    try:
        make_models(root, args.shared, args.new, args.hidden)
        dictionary = 2 * args.shared * args.hidden * 4
        print("dictionary + atoms' base rows: %.0f MiB; inputs %d x %d float32 each" %
              (dictionary / 2**20, args.shared + args.new, args.hidden))
        outputs = set()
        mib = lambda b: "%.0f" % (b / 2**20)
        for binary in args.soupkit:
            for ranks in args.ranks:
                seconds, maxrss, peaks, node, output = run(os.path.abspath(binary), ranks, root, args.k)
                outputs.add(output)
                print("%s, %d rank%s: %.1f s; maxrss MiB %s (by rank); peak PSS MiB %s, peak private MiB %s (by "
                      "process, ascending PSS); node peak (sum of PSS) MiB %s" % (
                          binary, ranks, "" if ranks == 1 else "s", seconds, " / ".join(map(mib, maxrss)),
                          " / ".join(mib(p[0]) for p in peaks), " / ".join(mib(p[1]) for p in peaks), mib(node)),
                      flush=True)
        print("outputs byte-identical across all runs: %s" % (len(outputs) == 1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
