#!/usr/bin/env bash
# Keeps the issue-19 studies' run records (pipeline/study/records.py) in the repository,
# so that a study's progress survives the loss of the machine or disk that runs it.
#
#   scripts/study_records.sh save ROOT [STUDY ...]     # ROOT/<study>/study/records -> docs/results/<study>/records
#   scripts/study_records.sh restore ROOT [STUDY ...]  # docs/results/<study>/records -> ROOT/<study>/study/records
#
# `save` copies every record over its copy in docs/ (the workdir is newer); `restore`
# never overwrites a record the workdir has. After `restore`, scripts/run_study.sh
# skips every run that has a record of its fingerprint. Default studies: fm_hetero
# and imdb_hetero. STUDY_RECORDS_DOCS replaces docs/results (for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/study_records.sh save|restore ROOT [STUDY ...]"
mode=${1:?$usage}
root=${2:?$usage}
shift 2
studies=("$@")
if [ ${#studies[@]} -eq 0 ]; then
  studies=(fm_hetero imdb_hetero)
fi
for name in "${studies[@]}"; do
  in_run="$root/$name/study/records"
  in_docs="${STUDY_RECORDS_DOCS:-docs/results}/$name/records"
  case "$mode" in
    save) src=$in_run dst=$in_docs overwrite=1 ;;
    restore) src=$in_docs dst=$in_run overwrite=0 ;;
    *) echo "error: $usage" >&2; exit 2 ;;
  esac
  if [ ! -d "$src" ]; then
    echo "$name: no records in $src"
    continue
  fi
  copied=0 kept=0
  # Records are written by a rename, so a *.json file is always a whole one.
  while IFS= read -r -d '' file; do
    rel=${file#"$src"/}
    target="$dst/$rel"
    if [ "$overwrite" = 0 ] && [ -e "$target" ]; then
      kept=$((kept + 1))
      continue
    fi
    mkdir -p "$(dirname "$target")"
    cp "$file" "$target.tmp"
    mv "$target.tmp" "$target"
    copied=$((copied + 1))
  done < <(find "$src" -type f -name '*.json' -print0)
  echo "$name: $copied records copied $src -> $dst ($kept already there, kept)"
done
