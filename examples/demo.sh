#!/usr/bin/env bash
# Fix examples/python-calc with dsv4, show the change, then undo it.
#
# The model's side of the session is a REPLAY: `--script` feeds the agent the hand-written
# model turns in examples/python-calc.fix.jsonl (V4's exact output format) instead of a live
# DeepSeek-V4. Everything else runs for real: test detection, the repository index, the
# prompt, DSML parsing, the tools, the tests, the workspace snapshots and undo.
# Needs: dsv4 installed (`pip install -e .`), git, and pytest in the active Python.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/dsv4-demo.XXXXXX")"
# Session logs of the demo go to its temporary folder, not to the user's state folder.
export DSV4_STATE_DIR="$work/state"
repo="$work/python-calc"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Copy examples/python-calc to $repo and commit it"
cp -R "$here/python-calc" "$repo"
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "python-calc as shipped"

step "The tests fail as shipped"
(cd "$repo" && python -m pytest -q -p no:cacheprovider) || true

step "dsv4 agent fix -- REPLAY of a scripted model session (not a live model)"
dsv4 agent fix "$repo" --script "$here/python-calc.fix.jsonl" --yes

step "What the agent changed"
git -C "$repo" --no-pager diff --stat
git -C "$repo" --no-pager diff

step "dsv4 undo --all: back to before the agent's first step"
dsv4 undo "$repo" --list
dsv4 undo "$repo" --all

step "The tests fail again"
if (cd "$repo" && python -m pytest -q -p no:cacheprovider); then
    echo "unexpected: the tests pass after undo" >&2
    exit 1
fi
git -C "$repo" --no-pager diff --stat
echo
echo "Done. The demo repository is in $repo"
