#!/usr/bin/env bash
# A generic CI step: let dsv4 fix the failing tests of a repository, using a shared
# OpenAI-compatible endpoint (`dsv4 serve` on a GPU host, vLLM or SGLang), and keep the
# evidence: the NDJSON event stream, the agent's session log and the diff it produced.
#
# Environment (inputs):
#   DSV4_ENDPOINT        required; the server's base URL, e.g. https://gpu-host:8000/v1
#   DSV4_API_KEY         the endpoint's bearer key, if it has one (read by dsv4 itself, so it
#                        never appears on a command line)
#   DSV4_ENDPOINT_MODEL  model name at the endpoint (default: the first one it lists)
#   DSV4_REPO            repository to fix (default: the current folder)
#   DSV4_OUT             folder for the outputs (default: $RUNNER_TEMP/dsv4-out, else
#                        $TMPDIR/dsv4-out; keep it outside the repository)
#   DSV4_MAX_STEPS       most model turns (default: dsv4's)
#   DSV4_TIMEOUT         wall-time limit in seconds (default: dsv4's)
#   DSV4_TEST            test command (default: detected)
#
# Outputs in $DSV4_OUT: events.ndjson (ends with one "result" event), sessions/*.jsonl (the
# session log), fix.diff (tracked changes plus new files).
#
# Exit code: dsv4's, passed through unchanged: 0 tests pass (fixed or already green),
# 1 still failing, 2 usage or configuration error, 3 a limit was reached, 4 model or
# endpoint error, 130 interrupted.

set -u -o pipefail

if [ -z "${DSV4_ENDPOINT:-}" ]; then
    echo "dsv4-ci-step: set DSV4_ENDPOINT to the OpenAI-compatible base URL (…/v1)" >&2
    exit 2
fi
repo=${DSV4_REPO:-.}
out=${DSV4_OUT:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}/dsv4-out}
mkdir -p "$out"
# The session log goes to $DSV4_STATE_DIR/sessions, so point it at the output folder.
export DSV4_STATE_DIR="$out"

args=(agent fix "$repo" --ci --json --endpoint "$DSV4_ENDPOINT")
[ -n "${DSV4_ENDPOINT_MODEL:-}" ] && args+=(--endpoint-model "$DSV4_ENDPOINT_MODEL")
[ -n "${DSV4_MAX_STEPS:-}" ] && args+=(--max-steps "$DSV4_MAX_STEPS")
[ -n "${DSV4_TIMEOUT:-}" ] && args+=(--timeout "$DSV4_TIMEOUT")
[ -n "${DSV4_TEST:-}" ] && args+=(--test "$DSV4_TEST")

dsv4 "${args[@]}" >"$out/events.ndjson"
code=$?

# The diff of the working tree against HEAD, new files included, without touching the index.
{
    git -C "$repo" diff HEAD --binary
    git -C "$repo" ls-files --others --exclude-standard -z |
        while IFS= read -r -d '' file; do
            git -C "$repo" diff --no-index --binary /dev/null "$file"
        done
} >"$out/fix.diff" 2>/dev/null

echo "dsv4-ci-step: exit $code; outputs in $out" >&2
tail -n 1 "$out/events.ndjson" >&2
exit "$code"
