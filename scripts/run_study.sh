#!/usr/bin/env bash
# The issue-19 study ("Does HAR work?"), every study config in priority order.
# Rerun the same command to resume: finished runs are skipped, an interrupted run
# continues from its last epoch (pipeline.study). Each study process stops after
# --max_jobs runs (exit 75) and is started again, which bounds its memory.
#
#   scripts/run_study.sh /work/study-runs        # workdirs <root>/fm_hetero, <root>/imdb_hetero
#
# Run it from a fixed checkout of the code (a git worktree), e.g.
#   setsid nohup nice -n 19 scripts/run_study.sh /work/study-runs >> /work/study-runs/study.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
ROOT=${1:?usage: scripts/run_study.sh WORKROOT}
PY=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

run_one() {  # config workdir
  while true; do
    echo "== $(date -u +%FT%TZ) pipeline.study --config=$1 --workdir=$2 (commit $(git rev-parse HEAD 2>/dev/null))"
    "$PY" -m pipeline.study --config="$1" --workdir="$2" --max_jobs=6
    rc=$?
    if [ "$rc" -ne 75 ]; then
      return "$rc"
    fi
  done
}

run_one configs/studies/fm_hetero.py "$ROOT/fm_hetero" || exit $?
run_one configs/studies/imdb_hetero.py "$ROOT/imdb_hetero" || exit $?
echo "== $(date -u +%FT%TZ) every study is complete"
