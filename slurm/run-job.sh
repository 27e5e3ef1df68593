#!/usr/bin/env bash
# Runs one soupkit job file on every task of a Slurm allocation, resumably.
# Called by the sbatch scripts beside it:
#   bash slurm/run-job.sh JOB.yaml [soupkit option...]
#
# - Always passes --resume: a first run starts from scratch, a requeued run
#   (preemption, node failure, or the time-limit requeue below) continues
#   from the job's journal, skipping tensors already written (verified by
#   checksum); the result is byte-identical to an uninterrupted run.
# - Near the time limit (sbatch --signal=B:USR1@SECONDS), requeues the job
#   itself, so a merge longer than the partition's limit finishes over
#   several allocations.
# Environment: SOUPKIT (the binary; default $SOUPKIT_HOME/build/bin/soupkit,
# SOUPKIT_HOME defaulting to the submit directory), SOUPKIT_LAUNCHER (default
# srun; e.g. "mpirun -n 4" outside Slurm).
set -euo pipefail

job="${1:?usage: run-job.sh JOB.yaml [soupkit option...]}"
shift
home="${SOUPKIT_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
soupkit="${SOUPKIT:-$home/build/bin/soupkit}"
[ -x "$soupkit" ] || { echo "run-job.sh: no soupkit binary at $soupkit (set SOUPKIT or SOUPKIT_HOME)" >&2; exit 1; }
[ -f "$job" ] || { echo "run-job.sh: no job file $job" >&2; exit 1; }

# One BLAS thread per task unless the job asked for more cores per task:
# ranks already fill the cores, and oversubscribed BLAS threads cost 2-5x.
export OPENBLAS_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
# Parallel HDF5 on Lustre/GPFS/NFS: HDF5's own flock()-based file locking
# fails or serialises there. soupkit locks its output through its journal.
export HDF5_USE_FILE_LOCKING=FALSE

# srun starts one soupkit per task; --kill-on-bad-exit ends the step as soon
# as any rank dies, so a crashed node cannot leave the others waiting.
read -r -a launcher <<< "${SOUPKIT_LAUNCHER:-srun --kill-on-bad-exit=1}"

requeue() {
  echo "run-job.sh: time limit near; requeueing job ${SLURM_JOB_ID:-?} (it will resume)" >&2
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    scontrol requeue "$SLURM_JOB_ID" || echo "run-job.sh: scontrol requeue failed; resubmit to resume" >&2
  fi
}
trap requeue USR1

echo "run-job.sh: $(date -Is) ${SLURM_JOB_ID:+job $SLURM_JOB_ID }${SLURM_RESTART_COUNT:+restart $SLURM_RESTART_COUNT }on ${SLURM_JOB_NUM_NODES:-1} node(s), ${SLURM_NTASKS:-?} task(s): $soupkit run $job --resume $*" >&2
"${launcher[@]}" "$soupkit" run "$job" --resume "$@" &
pid=$!
# `wait` returns early (status > 128) when the trap runs: wait again until
# the step itself has ended, and exit with its status.
while :; do
  status=0
  wait "$pid" || status=$?
  kill -0 "$pid" 2>/dev/null || break
done
exit "$status"
