#!/usr/bin/env bash
# For the `lfs: true` input: the tables must be real files, not Git LFS pointers. The action
# cannot check the repository out itself (the caller's actions/checkout does), so it checks
# that the caller's checkout fetched the LFS objects (`lfs: true` on actions/checkout).
set -euo pipefail
if [ "${LFS:-false}" != "true" ]; then
  exit 0
fi
if ! git lfs version > /dev/null 2>&1; then
  echo "::error::lfs is true, but git-lfs is not installed on this runner"
  exit 1
fi
# `git lfs ls-files` marks with "-" a file whose object is not checked out (still a pointer).
missing="$(git lfs ls-files | sed -n 's/^[0-9a-f]* - //p')"
if [ -n "$missing" ]; then
  while IFS= read -r path; do
    echo "::error file=$path::$path is a Git LFS pointer, not its content"
  done <<< "$missing"
  echo "::error::Git LFS objects were not fetched: set 'lfs: true' on actions/checkout (with: lfs: true) before this action"
  exit 1
fi
echo "Git LFS objects are checked out."
