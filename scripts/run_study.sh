#!/usr/bin/env bash
# The issue-19 study ("Does HAR work?"), every study config in priority order.
# Rerun the same command to resume: finished runs are skipped, an interrupted run
# continues from its last epoch (pipeline.study). Each study process stops after
# --max_jobs runs (exit 75) and is started again, which bounds its memory.
#
#   scripts/run_study.sh /work/study-runs        # workdirs <root>/fm_hetero, <root>/imdb_hetero
#   scripts/run_study.sh /work/study-runs imdb_hetero   # only the studies named
#
# The Fashion-MNIST study's process keeps about 1-1.5 of 2 cores busy, so running
# each study as its own command, side by side, finishes both sooner. STUDY_ARGS is
# passed to every pipeline.study call, e.g. one study's settings split between two
# commands (never the same setting in both):
#   STUDY_ARGS=--settings=paper scripts/run_study.sh /work/study-runs fm_hetero
#   STUDY_ARGS=--settings=noaug,quick_full scripts/run_study.sh /work/study-runs fm_hetero
#
# Run it from a fixed checkout of the code (a git worktree), e.g.
#   setsid nohup nice -n 19 scripts/run_study.sh /work/study-runs >> /work/study-runs/study.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
ROOT=${1:?usage: scripts/run_study.sh WORKROOT [STUDY ...]}
shift
STUDIES=("$@")
if [ ${#STUDIES[@]} -eq 0 ]; then
  STUDIES=(fm_hetero imdb_hetero)
fi
PY=${PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

run_one() {  # config workdir
  while true; do
    echo "== $(date -u +%FT%TZ) pipeline.study --config=$1 --workdir=$2 ${STUDY_ARGS:+$STUDY_ARGS }(commit $(git rev-parse HEAD 2>/dev/null))"
    # shellcheck disable=SC2086  # STUDY_ARGS: words on purpose
    "$PY" -m pipeline.study --config="$1" --workdir="$2" --max_jobs=6 ${STUDY_ARGS:-}
    rc=$?
    if [ "$rc" -ne 75 ]; then
      return "$rc"
    fi
  done
}

# ROOT holds one workdir per study (ROOT/<study>); a study's own workdir passed as ROOT
# would start every default study inside it.
if [ -d "$ROOT/study" ] || [ -d "$ROOT/cells" ]; then
  echo "error: $ROOT is a study's workdir (it has study/ or cells/); pass its parent as ROOT and the study's name after it, e.g. scripts/run_study.sh $(dirname "$ROOT") $(basename "$ROOT")" >&2
  exit 2
fi
for name in "${STUDIES[@]}"; do
  if [ ! -f "configs/studies/$name.py" ]; then
    echo "error: no study config configs/studies/$name.py" >&2
    exit 2
  fi
done
for name in "${STUDIES[@]}"; do
  run_one "configs/studies/$name.py" "$ROOT/$name" || exit $?
done
echo "== $(date -u +%FT%TZ) complete: ${STUDIES[*]}"
