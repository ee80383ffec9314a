#!/bin/bash
# asl-sweep workers as a Slurm job array: N tasks share one study through PostgreSQL (Optuna)
# and an MLflow tracking server (runs and artifacts); no shared scratch is needed. Task 0
# runs the study (and scores the final configuration on the test split once every stage is
# decided); tasks 1..N-1 join it as workers. Edit the partition, N, the study and the two
# addresses (or export them before sbatch), then:
#   sbatch deploy/slurm/workers.sh
#SBATCH --job-name=asl-sweep
#SBATCH --array=0-7             # N workers: 0..N-1
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=04:00:00
##SBATCH --gres=gpu:1           # one GPU per task where the partition has them
set -euo pipefail
STUDY=${STUDY:-sweeps/report.yaml}
# The two stores reach asl-sweep through its own variables, never on a command line, where
# `ps`, `sacct` and the job's records would show a password in the URL.
export ASL_SWEEP_STORAGE=${ASL_SWEEP_STORAGE:-postgresql://USER@DBHOST/optuna}
export ASL_SWEEP_TRACKING=${ASL_SWEEP_TRACKING:-http://MLFLOW-SERVER:5000}
HOME_DIR=${TMPDIR:-/tmp}/asl-sweep-$SLURM_ARRAY_JOB_ID-$SLURM_ARRAY_TASK_ID  # a cache only
if [ "$SLURM_ARRAY_TASK_ID" = 0 ]; then
  exec asl-sweep run "$STUDY" --workers 1 --home "$HOME_DIR"
else
  exec asl-sweep worker "$STUDY" --worker-index "$SLURM_ARRAY_TASK_ID" --threads \
    "$SLURM_CPUS_PER_TASK" --home "$HOME_DIR"
fi
