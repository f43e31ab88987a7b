# Sourced by every run step of the bpsync actions (bash): one way to call bpsync and to hand
# it the credentials, so that the three actions cannot drift apart.
#
# Reads, when set: BPSYNC_ENVIRONMENT (the `environment` input), INPUT_BIGPANDA_TOKEN,
# INPUT_TOKEN_ENV, INPUT_API_URL. Never prints a token.

# `bpsync ...` in the steps runs bpsync without colour, in the chosen environment. --env is
# given only when an environment was asked for: without `environments:` in bpsync.yaml there
# is none to name.
bpsync() {
  if [ -n "${BPSYNC_ENVIRONMENT:-}" ]; then
    command bpsync --no-color --env "$BPSYNC_ENVIRONMENT" "$@"
  else
    command bpsync --no-color "$@"
  fi
}

# Exports the BigPanda token under the variable bpsync.yaml names (api.token_env), and the API
# URL, only when the inputs are set: otherwise the job's own env: stays in force.
bpsync_credentials() {
  if [ -n "${INPUT_BIGPANDA_TOKEN:-}" ]; then
    local name="${INPUT_TOKEN_ENV:-BIGPANDA_TOKEN}"
    if ! [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
      echo "::error::token-env must be the name of an environment variable, like BIGPANDA_TOKEN"
      return 1
    fi
    export "$name=$INPUT_BIGPANDA_TOKEN"
  fi
  unset INPUT_BIGPANDA_TOKEN
  if [ -n "${INPUT_API_URL:-}" ]; then
    export BIGPANDA_API_URL="$INPUT_API_URL"
  fi
}
