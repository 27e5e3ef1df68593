#!/usr/bin/env python3
"""A measured scaling model of MonoSoup's grid route on a P x 1 ScaLAPACK
grid (the Gram, pdsytrd, the tridiagonal's eigenvalues, its eigenvectors by
dstemr on every rank, pdormtr, two pdgemm; see tests/bench/grid_steps.cpp
and docs/benchmarks.md, "Grid route scaling model").

    # per-step seconds on 1 and 2 ranks (JSON lines from soupkit_bench_grid_steps --json)
    mpirun -n 1 build/bin/soupkit_bench_grid_steps --repeats 2 --json W/steps.jsonl 2048x5632 ...
    mpirun -n 2 build/bin/soupkit_bench_grid_steps --repeats 2 --json W/steps.jsonl 2048x5632 ...
    # shared-memory ping-pong (alpha, beta of this machine)
    mpirun -n 2 build/bin/soupkit_bench_grid_steps --pingpong --json W/pingpong.jsonl
    # messages and bytes of every step on P ranks (Open MPI pml monitoring)
    /usr/bin/python3 tests/bench/grid_scaling_model.py volume --workdir W --ranks 2 3 4 -- 2048x5632 ...
    # the Hockney model, its check at P = 2, efficiencies, the 70B projection
    /usr/bin/python3 tests/bench/grid_scaling_model.py model --workdir W
"""
import argparse
import collections
import glob
import json
import math
import os
import re
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "..", "build", "bin", "soupkit_bench_grid_steps")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_btl_vader_single_copy_mechanism="none", OPENBLAS_NUM_THREADS="1", HDF5_USE_FILE_LOCKING="FALSE")
# grid_steps.cpp's steps 1..7
# Step 4: each rank a slice of the eigenvectors (dstemr), then its rows to the others.
SLICED = "dstemr eigenvectors (sliced) + exchange"
STEPS = ["Gram", "pdsytrd", "tridiagonal + dsterf + broadcast", SLICED, "pdormtr",
         "pdgemm 1", "pdgemm 2"]
# Steps every rank computes in full, whatever P (replicated serial LAPACK):
# their compute does not shrink with P (an Amdahl term).
SERIAL = {"tridiagonal + dsterf + broadcast"}
PANEL = 256  # columns of the Gram summed per reduce-scatter when m > n (pgram_svd.cpp)
BLOCK = 64  # rows per block of X and of the Gram matrix (pgram_svd.cpp)
PROF_LINE = re.compile(r"^[EI]\s+(\d+)\s+(\d+)\s+(\d+) bytes\s+(\d+) msgs sent")


# ---------------------------------------------------------------- measuring

def traffic_matrix(prefix, ranks):
    """bytes[src][dst], msgs[src][dst] of point-to-point traffic (collectives'
    included) from the pml monitoring's files prefix.<rank>.prof."""
    nbytes, msgs = np.zeros((ranks, ranks)), np.zeros((ranks, ranks))
    for rank in range(ranks):
        with open("%s.%d.prof" % (prefix, rank)) as f:
            for line in f:
                m = PROF_LINE.match(line)
                if m:
                    src, dst, b, c = map(int, m.groups())
                    nbytes[src, dst] += b
                    msgs[src, dst] += c
    return nbytes, msgs


def monitored_run(workdir, ranks, shape, stop_after):
    prefix = os.path.join(workdir, "prof", "%s-P%d-s%d" % (shape, ranks, stop_after), "p")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    for old in glob.glob(prefix + ".*.prof"):
        os.remove(old)
    cmd = ["nice", "mpirun", "--oversubscribe", "--bind-to", "none", "-n", str(ranks), "--mca", "pml_monitoring_enable",
           "1", "--mca", "pml_monitoring_enable_output", "3", "--mca", "pml_monitoring_filename", prefix,
           "--mca", "mpi_yield_when_idle", "1", BENCH, "--stop-after", str(stop_after), shape]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        sys.exit("failed: %s\n%s%s" % (" ".join(cmd), proc.stdout, proc.stderr))
    k = int(re.search(r"\| %s \| %d \| (\d+) \|" % (shape, ranks), proc.stdout).group(1))
    return traffic_matrix(prefix, ranks), k


def measure_volume(workdir, ranks, shape):
    """Traffic of each step: the run stopped after step s minus the run
    stopped after step s-1, minus measure()'s own barrier and reduction (the
    trailing empty step of a full run, -1, against a run stopped after the last step)."""
    last = len(STEPS)
    runs = {s: monitored_run(workdir, ranks, shape, s) for s in range(-1, last + 1)}
    k = runs[-1][1]
    overhead_b = runs[-1][0][0] - runs[last][0][0]
    overhead_m = runs[-1][0][1] - runs[last][0][1]
    out = []
    for s in range(1, last + 1):
        b = runs[s][0][0] - runs[s - 1][0][0] - overhead_b
        c = runs[s][0][1] - runs[s - 1][0][1] - overhead_m
        m, n = map(int, shape.split("x"))
        out.append({"m": m, "n": n, "ranks": ranks, "k": k, "step": STEPS[s - 1],
                    "sent_bytes": b.sum(axis=1).tolist(), "sent_msgs": c.sum(axis=1).tolist(),
                    "recv_bytes": b.sum(axis=0).tolist(), "recv_msgs": c.sum(axis=0).tolist(),
                    "overhead_msgs_per_rank": overhead_m.sum(axis=1).tolist()})
    return out


def volume_main(args):
    path = os.path.join(args.workdir, "volume.jsonl")
    with open(path, "a") as f:
        for shape in args.shapes:
            for ranks in args.ranks:
                for rec in measure_volume(args.workdir, ranks, shape):
                    f.write(json.dumps(rec) + "\n")
                    print("%s P=%d %-22s busiest rank: %8.0f msgs sent, %10.3f MB sent, %10.3f MB received"
                          % (shape, ranks, rec["step"], max(rec["sent_msgs"]), max(rec["sent_bytes"]) / 1e6,
                             max(rec["recv_bytes"]) / 1e6), flush=True)



# ---------------------------------------------------------------- the model

def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def step_of(name):
    """grid_steps.cpp's step name -> STEPS entry (its two pdgemm are named
    after what they compute, which differs between left and right)."""
    if name.startswith("pdgemm"):
        return "pdgemm 1" if "T =" in name else "pdgemm 2"
    return name if name in STEPS else None


def measured_seconds(records):
    """Best (min over repeats) seconds per (m, n, ranks, step), and k per shape."""
    best, ks = {}, {}
    for rec in records:
        step = step_of(rec["step"])
        if step is None:
            continue
        key = (rec["m"], rec["n"], rec["ranks"], step)
        best[key] = min(best.get(key, math.inf), rec["seconds"])
        ks[(rec["m"], rec["n"])] = rec["k"]
    return best, ks


def pingpong_fit(records):
    """Hockney alpha (s) and beta (bytes/s) of the ping-pong: alpha the
    smallest message's half round trip, beta from a least-squares fit of
    t = alpha + bytes / beta over messages of 1 MiB and more."""
    sizes = np.array([r["pingpong_bytes"] for r in records], float)
    secs = np.array([r["seconds"] for r in records])
    alpha = secs[np.argmin(sizes)]
    big = sizes >= 2**20
    inv_beta = float(np.sum((secs[big] - alpha) * sizes[big]) / np.sum(sizes[big] ** 2))
    return alpha, 1 / inv_beta


def cols_of(r, k):
    """Columns of the eigenvector block the projection multiplies by
    (pdspectral_reweight takes the complement when 2k > r)."""
    return min(k, r - k)


def scale_of(step, m, n, k):
    """The size a step's traffic is proportional to (bytes), and the count
    its messages are proportional to, from what the algorithm moves on a
    P x 1 grid (the fit's residuals check them against the measurements):
      Gram, m <= n (pdsyrk, G = X X^T): every rank needs all of X (an all-gather), m n
        doubles, one message per 64-column block of G;
      Gram, m > n (G = X^T X): the partial Grams' lower triangles are reduce-scattered a
        256-column panel at a time, r (r + 256) / 2 doubles, r / 256 reduce-scatters;
      pdsytrd: a broadcast and a reduction of a vector per column, the panels' updates: r^2, r;
      tridiagonal: 2 r doubles allreduced, r eigenvalues broadcast: r, 1;
      dstemr, sliced: the widest slice's rows to the other ranks, r cols doubles times its
        share, one message per peer (p_terms);
      pdormtr: the reflectors' 64-column panels broadcast and V^T Z (64 x cols) reduced per
        panel: r (r / 2 + cols), one message per panel, r / 64;
      pdgemm: the factor that is not row-distributed like X is reduced or all-gathered:
        T (cols x n) when m <= n, Q (n x cols) when m > n: cols n doubles, one message per
        64-row block of that factor."""
    r, c = min(m, n), cols_of(min(m, n), k)
    blocks = lambda rows: math.ceil(rows / BLOCK)  # noqa: E731
    if step == "Gram":
        return (8.0 * m * n, blocks(r)) if m <= n else (8.0 * r * (r + PANEL) / 2, math.ceil(r / PANEL))
    if step == "pdsytrd":
        return 8.0 * r * r, float(r)
    if step == "tridiagonal + dsterf + broadcast":
        return 8.0 * r, 1.0
    if step == SLICED:
        return 8.0 * r * c, 1.0
    if step == "pdormtr":
        return 8.0 * r * (r / 2 + c), blocks(r)
    return 8.0 * c * n, blocks(c if m <= n else n)


def p_terms(ranks, step=None, what="bytes", shape=None):
    """The two P-dependences the steps' traffic follows: (P-1)/P (all-gather,
    reduce-scatter: the busiest rank moves all but its own share) and log2 P
    (trees of broadcasts and reductions). The sliced eigenvectors: the rank
    with the widest slice sends the others their rows of it, its share of
    r cols times (P-1)/P (bytes: that term alone), in P - 1 messages plus two
    small agreements (log2 P)."""
    p = np.asarray(ranks, float)
    if step == SLICED:
        if what == "bytes":
            share = np.array([compute_share(SLICED, shape[0], shape[1], int(q)) for q in p])
            return np.stack([share * (p - 1) / p, np.zeros_like(p)], axis=-1)
        return np.stack([p - 1, np.log2(p)], axis=-1)
    return np.stack([(p - 1) / p, np.log2(p)], axis=-1)


def busiest(rec):
    """The busiest rank's bytes (more of sent and received) and messages sent."""
    b = max(max(rec["sent_bytes"]), max(rec["recv_bytes"]))
    return b, max(rec["sent_msgs"])


def fit_volumes(volume):
    """Per step (and for the Gram per orientation): bytes / size and messages /
    count as a (P-1)/P + b log2 P, least squares over every measured shape
    and P, coefficients kept >= 0."""
    groups = collections.defaultdict(list)
    for rec in volume:
        groups[(rec["step"], rec["step"] == "Gram" and rec["m"] > rec["n"])].append(rec)
    fits = {}
    for key, recs in groups.items():
        out = {}
        for what, col in (("bytes", 0), ("msgs", 1)):
            a = np.concatenate([p_terms([r["ranks"]], key[0], what, (r["m"], r["n"])) for r in recs])
            y = np.array([busiest(r)[col] / scale_of(r["step"], r["m"], r["n"], r["k"])[col] for r in recs])
            coef = nonnegative_lstsq(a, y)
            resid = a @ coef - y
            out[what] = coef
            out[what + "_max_rel_error"] = float(np.max(np.abs(resid) / np.maximum(y, 1e-30)))
        fits[key] = out
    return fits


def nonnegative_lstsq(a, y):
    """Least squares with both coefficients >= 0 (two unknowns: try the
    unconstrained fit, else each one alone)."""
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    if np.all(coef >= 0):
        return coef
    best = None
    for j in range(a.shape[1]):
        c = np.zeros(a.shape[1])
        c[j] = max(float(a[:, j] @ y / (a[:, j] @ a[:, j])), 0.0)
        err = np.sum((a @ c - y) ** 2)
        if best is None or err < best[0]:
            best = (err, c)
    return best[1]


def modelled_traffic(fits, step, m, n, k, ranks):
    """(bytes, messages) of the busiest rank in `step` on `ranks` ranks."""
    if ranks == 1:
        return 0.0, 0.0
    f = fits[(step, step == "Gram" and m > n)]
    size, count = scale_of(step, m, n, k)
    tb = p_terms([ranks], step, "bytes", (m, n))[0]
    tm = p_terms([ranks], step, "msgs", (m, n))[0]
    return size * float(tb @ f["bytes"]), count * float(tm @ f["msgs"])


def fit_compute(seconds, ks):
    """One-rank seconds per step as a rate times the step's operation count
    (flops_of), for shapes not measured here (the 70B ones); each rate from
    the step's largest measured instance (BLAS-3 rates still grow with size
    at r = 2048)."""
    rates = {}
    for (m, n, ranks, step), t in seconds.items():
        if ranks == 1:
            f = flops_of(step, m, n, ks[(m, n)])
            if f > rates.get(step, (0, 0))[0]:
                rates[step] = (f, t / f)
    return {step: rate for step, (_, rate) in rates.items()}


def flops_of(step, m, n, k):
    """What a step's one-rank time is taken proportional to: the Gram r^2
    max(m, n), pdsytrd r^3, dsterf r^2, dstemr r cols (MRRR: O(r) per
    eigenvector), pdormtr r^2 cols, pdgemm cols m n."""
    r, c = float(min(m, n)), float(cols_of(min(m, n), k))
    if step == "Gram":
        return r * r * max(m, n)
    if step == "pdsytrd":
        return r ** 3
    if step == "tridiagonal + dsterf + broadcast":
        return r * r
    if step == SLICED:
        return r * c
    if step == "pdormtr":
        return r * r * c
    return c * m * n


def one_rank_seconds(step, m, n, k, seconds, rates):
    """Measured where we have it, else the fitted rate."""
    got = seconds.get((m, n, 1, step))
    return got if got is not None else rates[step] * flops_of(step, m, n, k)


# (m, n) -> {P: widest eigenvector slice}, and (m, n) -> cols, from the
# benchmark's records (model_main fills them).
WIDEST, COLS = {}, {}


def compute_share(step, m, n, ranks):
    """Fraction of the one-rank compute the busiest rank does: all of it for
    the replicated serial steps; for the sliced eigenvectors the widest
    slice's share of the columns (measured at P = 2, 8, 64, 512: the
    largest measured P <= ranks, for unmeasured shapes the largest share
    measured); else its blocks of 64 rows (of X; of the Gram for pdsytrd and
    pdormtr) over all blocks."""
    if step in SERIAL:
        return 1.0
    if step == SLICED:
        if ranks == 1:
            return 1.0
        def share(shape):
            known = [p for p in WIDEST[shape] if p <= ranks]
            return WIDEST[shape][max(known)] / COLS[shape] if known else 1.0
        if (m, n) in WIDEST:
            return share((m, n))
        return max((share(sh) for sh in WIDEST), default=1.0)
    blocks = math.ceil((min(m, n) if step in ("pdsytrd", "pdormtr") else m) / BLOCK)
    return math.ceil(blocks / ranks) / blocks


class Network:
    """Hockney figures for a rank count: latency alpha (s), bandwidth beta (bytes/s per rank)."""

    def __init__(self, name, figures):
        self.name, self.figures = name, figures

    def __call__(self, ranks):
        return self.figures(ranks)


def step_model(step, m, n, k, ranks, seconds, rates, fits, network, slowdown=None):
    """(compute, latency, bandwidth) seconds of one step on `ranks` ranks.
    compute is the busiest rank's share of the one-rank time, times the
    step's measured slowdown on 2 ranks when given (see compute_slowdowns)."""
    t1 = one_rank_seconds(step, m, n, k, seconds, rates)
    compute = t1 * compute_share(step, m, n, ranks)
    if slowdown is not None and ranks > 1:
        compute *= slowdown_of(slowdown, step, m, n)
    nbytes, msgs = modelled_traffic(fits, step, m, n, k, ranks)
    alpha, beta = network(ranks)
    return compute, msgs * alpha, nbytes / beta


def compute_slowdowns(seconds, ks, rates, fits, network):
    """Per step and measured shape: the 2-rank time less its modelled
    communication, over the busiest rank's share of the one-rank time. Above
    1 when a step's compute does not halve on 2 ranks (smaller BLAS panels,
    waiting at each of pdsytrd's thousands of exchanges, two ranks sharing
    the caches and memory; for the serial steps, two ranks doing the same
    work side by side): the part of the 2-rank time the Hockney terms do not
    explain. Steps under 5 ms on one rank are left at 1 (timer noise)."""
    out = {}
    for (m, n, ranks, step), t2 in seconds.items():
        if ranks != 2 or (m, n, 1, step) not in seconds or seconds[(m, n, 1, step)] < 0.005:
            continue
        _, lat, bw = step_model(step, m, n, ks[(m, n)], 2, seconds, rates, fits, network)
        out[(step, m, n)] = (t2 - lat - bw) / (seconds[(m, n, 1, step)] * compute_share(step, m, n, 2))
    return out


def slowdown_of(slowdowns, step, m, n):
    """The measured factor for this shape, else the largest measured one of
    the step (the shapes not measured here are 70B's; the largest keeps the
    model on the side of lower efficiency)."""
    got = slowdowns.get((step, m, n))
    if got is not None:
        return got
    return max([v for (s, _, _), v in slowdowns.items() if s == step], default=1.0)


def route_model(m, n, k, ranks, seconds, rates, fits, network, slowdown=None):
    parts = [step_model(s, m, n, k, ranks, seconds, rates, fits, network, slowdown) for s in STEPS]
    t1 = sum(one_rank_seconds(s, m, n, k, seconds, rates) for s in STEPS)
    tp = sum(sum(p) for p in parts)
    return t1, tp, t1 / (ranks * tp)


def model_main(args):
    records = load_jsonl(os.path.join(args.workdir, "steps.jsonl"))
    seconds, ks = measured_seconds(records)
    for rec in records:
        if rec.get("widest_slice"):
            WIDEST[(rec["m"], rec["n"])] = {int(p): w for p, w in rec["widest_slice"].items()}
            COLS[(rec["m"], rec["n"])] = rec["cols"]
    volume = load_jsonl(os.path.join(args.workdir, "volume.jsonl"))
    alpha_shm, beta_shm = pingpong_fit(load_jsonl(os.path.join(args.workdir, "pingpong.jsonl")))
    fits = fit_volumes(volume)
    rates = fit_compute(seconds, ks)
    shapes = sorted({(m, n) for (m, n, _, _) in seconds}, key=lambda s: s[0] * s[1])

    print("== Shared-memory ping-pong here: alpha %.2f us, beta %.2f GB/s" % (alpha_shm * 1e6, beta_shm / 1e9))
    print("\n== Measured seconds per step, 1 and 2 ranks (best of the repeats)")
    print("| shape | k | step | 1 rank | 2 ranks | speed-up |\n|---|---|---|---|---|---|")
    for m, n in shapes:
        for s in STEPS:
            t1, t2 = seconds.get((m, n, 1, s)), seconds.get((m, n, 2, s))
            if t1 is None:
                continue
            print("| %dx%d | %d | %s | %.3f | %s | %s |" % (
                m, n, ks[(m, n)], s, t1, "-" if t2 is None else "%.3f" % t2,
                "%.2fx" % (t1 / t2) if t2 is not None and t2 > 0.001 else "-"))

    print("\n== Measured traffic per step (busiest rank: messages sent, MB more of sent/received)")
    print("| shape | step | " + " | ".join("P=%d" % p for p in sorted({r["ranks"] for r in volume})) + " |")
    print("|---|---|" + "---|" * len({r["ranks"] for r in volume}))
    by = {(r["m"], r["n"], r["ranks"], r["step"]): r for r in volume}
    for m, n in sorted({(r["m"], r["n"]) for r in volume}, key=lambda s: s[0] * s[1]):
        for s in STEPS:
            cells = []
            for p in sorted({r["ranks"] for r in volume}):
                rec = by.get((m, n, p, s))
                cells.append("%d msgs, %.2f MB" % (busiest(rec)[1], busiest(rec)[0] / 1e6) if rec else "-")
            print("| %dx%d | %s | %s |" % (m, n, s, " | ".join(cells)))

    print("\n== Traffic fit: busiest rank = size x (a (P-1)/P + b log2 P)")
    print("| step | size (bytes) | a | b | max rel. error | count (messages) | a | b | max rel. error |")
    print("|---|---|---|---|---|---|---|---|---|")
    size_names = {("Gram", False): ("8 m n", "r / 64"), ("Gram", True): ("8 r (r+256)/2", "r / 256"),
                  ("pdsytrd", False): ("8 r^2", "r"), ("tridiagonal + dsterf + broadcast", False): ("8 r", "1"),
                  (SLICED, False): ("8 r cols", "1"),
                  ("pdormtr", False): ("8 r (r/2 + cols)", "r / 64"),
                  ("pdgemm 1", False): ("8 cols n", "(cols or n) / 64"),
                  ("pdgemm 2", False): ("8 cols n", "(cols or n) / 64")}
    for key in sorted(fits, key=lambda k: (STEPS.index(k[0]), k[1])):
        f = fits[key]
        sn = size_names[key]
        print("| %s%s | %s | %.3g | %.3g | %.0f%% | %s | %.3g | %.3g | %.0f%% |" % (
            key[0], " (m > n)" if key[1] else (" (m <= n)" if key[0] == "Gram" else ""), sn[0], f["bytes"][0],
            f["bytes"][1], 100 * f["bytes_max_rel_error"], sn[1], f["msgs"][0], f["msgs"][1],
            100 * f["msgs_max_rel_error"]))

    shm = Network("shared memory here", lambda p: (alpha_shm, beta_shm))
    print("\n== Model check at P = 2 (network: this machine's ping-pong)")
    print("| shape | step | measured 2 ranks | model: compute + latency + bandwidth | model / measured |")
    print("|---|---|---|---|---|")
    for m, n in shapes:
        if (m, n, 2, "Gram") not in seconds or (m, n, 1, "Gram") not in seconds:
            continue
        total_meas = total_model = 0.0
        for s in STEPS:
            c, l, b = step_model(s, m, n, ks[(m, n)], 2, seconds, rates, fits, shm)
            meas = seconds[(m, n, 2, s)]
            total_meas += meas
            total_model += c + l + b
            print("| %dx%d | %s | %.3f | %.3f = %.3f + %.3f + %.3f | %s |" % (
                m, n, s, meas, c + l + b, c, l, b, "%.2f" % ((c + l + b) / meas) if meas > 0.001 else "-"))
        print("| %dx%d | **route** | %.3f | %.3f | %.2f |" % (m, n, total_meas, total_model, total_model / total_meas))

    slowdowns = compute_slowdowns(seconds, ks, rates, fits, shm)
    print("\n== Compute slowdown on 2 ranks: (measured - modelled communication) / (one-rank time x share)")
    print("| shape | " + " | ".join(STEPS) + " |\n|---|" + "---|" * len(STEPS))
    for m, n in shapes:
        if ("Gram", m, n) in slowdowns:
            print("| %dx%d | %s |" % (m, n, " | ".join("%.2f" % slowdowns[(s, m, n)] if (s, m, n) in slowdowns
                                                      else "-" for s in STEPS)))

    hdr = Network("HDR100, a link per rank: alpha 2 us, beta 12.5 GB/s", lambda p: (2e-6, 12.5e9))
    node = Network("64 ranks per node: this machine's shared memory within a node; beyond, alpha 2 us and "
                   "12.5 GB/s / 64 per rank (one HDR100 link shared by the node)",
                   lambda p: (alpha_shm, beta_shm) if p <= 64 else (2e-6, 12.5e9 / 64))
    median_cols = float(np.median([cols_of(min(m, n), k) / min(m, n) for (m, n), k in ks.items()]))
    targets = [(m, n, ks[(m, n)]) for m, n in shapes]
    seventy = [(8192, 8192), (1024, 8192), (28672, 8192), (8192, 28672), (32000, 8192)]
    targets += [(m, n, int(round(median_cols * min(m, n)))) for m, n in seventy if (m, n) not in ks]
    print("\n(70B shapes: k = %.2f r, the median of the measured shapes; one-rank seconds from the rates %s)"
          % (median_cols, ", ".join("%s %.3g s/flop" % kv for kv in sorted(rates.items()))))
    for net in (hdr, node):
        print("\n== Modelled grid efficiency E(P) = T(1) / (P T(P)), compute slowdown of 2 ranks carried on "
              "(pure Hockney in parentheses); network: %s" % net.name)
        print("| shape | T(1) s | P=8 | P=64 | P=512 | P=4096 | T(512): compute / latency / bandwidth | "
              "fastest P (T there) |")
        print("|---|---|---|---|---|---|---|---|")
        for m, n, k in targets:
            cells = []
            for p in (8, 64, 512, 4096):
                cal = route_model(m, n, k, p, seconds, rates, fits, net, slowdowns)[2]
                pure = route_model(m, n, k, p, seconds, rates, fits, net)[2]
                cells.append("%.0f%% (%.0f%%)" % (100 * cal, 100 * pure))
            parts = np.sum([step_model(s, m, n, k, 512, seconds, rates, fits, net, slowdowns) for s in STEPS], axis=0)
            fastest = min((route_model(m, n, k, 2**e, seconds, rates, fits, net, slowdowns)[1], 2**e)
                          for e in range(13))
            print("| %dx%d%s | %.1f | %s | %.3f / %.3f / %.3f s | %d (%.2f s) |" % (
                m, n, "" if (m, n) in ks else " (rates fitted)",
                route_model(m, n, k, 1, seconds, rates, fits, net)[0], " | ".join(cells), *parts, fastest[1],
                fastest[0]))

    from engine_scaling import project, llama70b_shapes, tensor_costs  # noqa: E402
    coef = np.array(args.coef)
    params = sum(m * n for _, m, n in llama70b_shapes())
    io_bytes = 3 * 2 * params

    def route_cost(m, n):
        """One core's seconds for a 70B matrix by this route: its modelled
        one-rank time plus the old fit's per-element term (reading,
        converting, writing), c m n."""
        return route_model(m, n, int(round(median_cols * min(m, n))), 1, seconds, rates, fits, hdr)[0] + \
            coef[2] * m * n

    old_total = sum(c for c, _, _ in tensor_costs(coef))
    new_total = sum(c for c, _, _ in tensor_costs(coef, route_cost))
    print("\n== Projection: Llama-2-70B MonoSoup, engine_scaling.py's method. One-core seconds per tensor: "
          "this route's one-rank model + %.3g m n (%.1f core-hours; the old route's fit %s gave %.1f)"
          % (coef[2], new_total / 3600, " + ".join("%.3g" % c for c in coef), old_total / 3600))
    print("| nodes | ranks | per-tensor cost | grid efficiency | tensors on the grid | compute | I/O | "
          "wall (I/O overlapped .. not) |")
    print("|---|---|---|---|---|---|---|---|")
    for nodes in (1, 8, 64):
        ranks = 64 * nodes
        io = io_bytes / (2e9 * nodes)
        rows = [("old route's fit", "0.5 assumed (the old table)", 0.5, False, None),
                ("this route", "0.5 assumed", 0.5, False, route_cost)]
        for net, label in ((hdr, "a link per rank"), (node, "64 ranks share a link")):
            def eff(m, n, p, net=net):
                return route_model(m, n, int(round(median_cols * min(m, n))), p, seconds, rates, fits, net,
                                   slowdowns)[2]
            rows.append(("this route", "modelled, %s" % label, eff, False, route_cost))
            rows.append(("this route", "modelled, %s; sub-grids (not what the engine does)" % label, eff, True,
                         route_cost))
        for cost_name, name, eff, subgrids, cost in rows:
            if subgrids:
                compute, k_grid, size = project_subgrids(coef, ranks, eff, cost)
                where = "%d, on grids of %d ranks" % (k_grid, size)
            else:
                _, compute, k_grid = project(coef, ranks, eff, with_grid_count=True, cost=cost)
                where = "%d" % k_grid
            print("| %d | %d | %s | %s | %s | %.0f s | %.0f s | %.1f-%.1f min |" % (
                nodes, ranks, cost_name, name, where, compute, io, max(compute, io) / 60, (compute + io) / 60))


def project_subgrids(coef, ranks, efficiency, cost=None):
    """What grids smaller than all ranks would give (the engine forms one
    grid of all ranks): the largest K tensors each on a grid of G ranks,
    ranks / G such grids working side by side (largest first onto the least
    loaded grid), then the rest balanced over all ranks; best K and G."""
    from engine_scaling import lpt_wall, tensor_costs  # noqa: E402
    tensors = tensor_costs(coef, cost)
    costs = [c for c, _, _ in tensors]
    best = (lpt_wall(costs, ranks), 0, 1)
    for g in (2**e for e in range(1, 13) if 2**e <= ranks):
        for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, len(costs)):
            on_grids = [c / (g * efficiency(m, n, g)) for c, m, n in tensors[:k]]
            wall = lpt_wall(on_grids, ranks // g) + (lpt_wall(costs[k:], ranks) if k < len(costs) else 0)
            best = min(best, (wall, k, g))
    return best


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("volume")
    v.add_argument("--workdir", default="/tmp/soupkit-bench-grid2")
    v.add_argument("--ranks", type=int, nargs="+", default=[2, 3, 4])
    v.add_argument("shapes", nargs="+")
    mo = sub.add_parser("model")
    mo.add_argument("--workdir", default="/tmp/soupkit-bench-grid2")
    # engine_scaling.py's least-squares fit of GPT-2 MonoSoup per-tensor seconds
    # (a m n r + b r^3 + c m n), as docs/benchmarks.md quotes it.
    mo.add_argument("--coef", type=float, nargs=3, default=[6.4e-11, 8.8e-11, 8.4e-14])
    args = ap.parse_args()
    {"volume": volume_main, "model": model_main}[args.cmd](args)


if __name__ == "__main__":
    main()
