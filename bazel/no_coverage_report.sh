#!/bin/sh
echo "bazel coverage is not supported offline: use pytest-cov (docs/BAZEL.md)" >&2
exit 1
