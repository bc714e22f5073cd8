#!/usr/bin/env bash
# The body of the composite action in action.yml: install mlrollout if this runner lacks it,
# run one command on a plan or a rollout, and hand its outcome to the workflow (step outputs,
# the job summary, annotations). Inputs arrive as INPUT_* environment variables, as the action
# sets them; run it the same way by hand to try it.
set -uo pipefail

command="${INPUT_COMMAND:-run}"
state="${INPUT_STATE:-.mlrollout}"
plan="${INPUT_PLAN:-}"
rollout="${INPUT_ROLLOUT:-}"
extra="${INPUT_EXTRA:-}"
allow_waiting="${INPUT_ALLOW_WAITING:-true}"

if ! command -v mlrollout >/dev/null 2>&1; then
    requirement="${INPUT_VERSION:-}"
    if [ -z "$requirement" ]; then
        requirement="${GITHUB_ACTION_PATH:-.}"  # this action's own checkout
    fi
    echo "::group::install mlrollout ($requirement)"
    python3 -m pip install --quiet "$requirement" || { echo "::error::could not install mlrollout from $requirement"; exit 6; }
    echo "::endgroup::"
fi

case "$command" in
    run)
        [ -n "$plan" ] || { echo "::error::the run command needs the plan input"; exit 2; }
        args=(run --yes "$plan") ;;
    resume|promote|abort)
        [ -n "$rollout" ] || { echo "::error::the $command command needs the rollout input"; exit 2; }
        args=("$command" "$rollout") ;;
    watch)
        args=(status ${rollout:+"$rollout"} --watch) ;;
    *)
        echo "::error::unknown command '$command' (run, resume, promote, abort, watch)"; exit 2 ;;
esac
# shellcheck disable=SC2206  # extra is a list of words on purpose
extra_args=($extra)

errors="$(mktemp)"
mlrollout --state "$state" "${args[@]}" "${extra_args[@]}" 2>"$errors"
code=$?
cat "$errors" >&2  # progress is on stdout; stderr has the start line, the summary, any error

id="$(sed -n 's/^rollout \([^ ]*\) started.*/\1/p' "$errors" | head -n 1)"
if [ -z "$id" ]; then
    id="$rollout"
fi
rm -f "$errors"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    {
        echo "rollout-id=$id"
        echo "exit-code=$code"
    } >> "$GITHUB_OUTPUT"
fi
if [ "$code" -eq 3 ] && [ "$allow_waiting" = "true" ]; then
    echo "::notice title=mlrollout::rollout $id waits for a human: \`mlrollout promote $id\` or \`mlrollout abort $id\`, then resume"
    exit 0
fi
exit "$code"
