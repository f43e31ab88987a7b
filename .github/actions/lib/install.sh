#!/usr/bin/env bash
# Installs bpsync for the bpsync actions: the release named by the `bpsync-version` input from
# PyPI, or else bpsync from the action's own repository at the ref the action was used at (so
# `OWNER/bpsync/.github/actions/plan@v1` runs the bpsync of v1, and this repository's own
# workflows, using `./.github/actions/plan`, test the code of the commit under test).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -n "${BPSYNC_VERSION:-}" ]; then
  if ! [[ "$BPSYNC_VERSION" =~ ^[0-9][0-9A-Za-z.+!-]*$ ]]; then
    echo "::error::bpsync-version must be a version such as 0.2.0, not '$BPSYNC_VERSION'"
    exit 1
  fi
  python -m pip install --disable-pip-version-check --quiet "bpsync==$BPSYNC_VERSION"
else
  python -m pip install --disable-pip-version-check --quiet "$here/../../.."
fi
command bpsync --version
