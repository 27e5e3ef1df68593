#!/usr/bin/env python3
"""A real evaluator for greedy soup tests: accuracy of a tiny linear
classifier stored in the checkpoint, on a fixed synthetic data set.

    soup_evaluator.py MODEL_DIR [--calls FILE] [--fail-on-call K] [--garbage]

The data set: 360 points on the unit circle at angles 0.5, 1.5, ..., 359.5
degrees, labelled 1 where cos(angle) > 0. The model's 'clf.weight' [2] is a
direction w; it predicts 1 where w . x > 0. A direction at angle t (degrees,
|t| < 90) therefore misclassifies 2 * round(|t|) points: accuracy is
1 - round(|t|)/180, away from the half-degree boundaries. The test places
its ingredients' directions so the greedy path is known in advance.

The checkpoint must be a model directory with model.safetensors and the
config.json of the first ingredient (checked: soupkit must hand the
evaluator a loadable directory). Noise lines go to stdout and stderr before
the score, which is the last line of stdout.

--calls FILE appends the model path to FILE (to count evaluations);
--fail-on-call K exits 3 on the K-th call counted in FILE; --garbage prints
a non-number last.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from soupkit_testlib import read_checkpoint  # noqa: E402


def dataset():
    angles = np.deg2rad(np.arange(360) + 0.5)
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = (np.cos(angles) > 0).astype(np.int64)
    return x, y


def accuracy(weight):
    x, y = dataset()
    predicted = (x @ np.asarray(weight, dtype=np.float64) > 0).astype(np.int64)
    return float(np.mean(predicted == y))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--calls")
    parser.add_argument("--fail-on-call", type=int)
    parser.add_argument("--garbage", action="store_true")
    args = parser.parse_args()

    calls = 0
    if args.calls:
        with open(args.calls, "a") as f:
            f.write(args.model + "\n")
        with open(args.calls) as f:
            calls = len(f.read().splitlines())
    if args.fail_on_call and calls == args.fail_on_call:
        print("loading %s" % args.model)
        print("CUDA error: out of memory (simulated failure on call %d)" % calls, file=sys.stderr)
        sys.exit(3)

    if args.garbage:
        print("evaluating %s" % args.model)
        print("some progress on stderr", file=sys.stderr)
        print("accuracy: n/a")
        return
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "toy-classifier", config
    tensors, _ = read_checkpoint(args.model)
    dtype, weight = tensors["clf.weight"]
    assert dtype == "F32", dtype
    print("evaluating %s on 360 points" % args.model)
    print("some progress on stderr", file=sys.stderr)
    print("%.17g" % accuracy(weight))


if __name__ == "__main__":
    main()
