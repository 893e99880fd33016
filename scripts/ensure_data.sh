#!/usr/bin/env bash
# Makes sure the default dataset (Fashion-MNIST as IDX files) is on this machine.
# Order: $HAR_DATA_DIR, then the Debian package's directory, then installing that
# package when apt is usable; otherwise the pipeline falls back to a TFDS download.
set -euo pipefail
debian_dir=/usr/share/datasets/fashion-mnist
has_idx() { ls "$1"/train-images-idx3-ubyte* >/dev/null 2>&1; }

if [ -n "${HAR_DATA_DIR:-}" ]; then
  if has_idx "$HAR_DATA_DIR"; then
    echo "== data: using \$HAR_DATA_DIR=$HAR_DATA_DIR"; exit 0
  fi
  echo "== data: \$HAR_DATA_DIR=$HAR_DATA_DIR holds no train-images-idx3-ubyte[.gz]" >&2
  exit 1
fi
if has_idx "$debian_dir"; then
  echo "== data: using $debian_dir (Debian package dataset-fashion-mnist)"; exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== data: installing Debian package dataset-fashion-mnist (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  if has_idx "$debian_dir"; then echo "== data: installed into $debian_dir"; exit 0; fi
fi
echo "== data: no local Fashion-MNIST; the pipeline will try a TFDS download (needs internet)"
