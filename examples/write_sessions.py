"""Write the scripted model sessions `examples/<name>.fix.jsonl` and `<name>.nofix.jsonl`.

Each line is one model turn, `{"completion": "..."}`: the raw text DeepSeek-V4 generates
after the prompt in thinking mode, `reasoning</think>content`, then (when the turn calls
tools) `\\n\\n<｜DSML｜tool_calls>…</｜DSML｜tool_calls>`, then `<｜end▁of▁sentence｜>`.
The turns are written by hand in that exact format (they were not captured from a live
model); replaying them runs everything else for real: prompting, DSML parsing, the tools,
the tests and undo. Run `python examples/write_sessions.py` after editing a session here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DSML = "｜DSML｜"
EOS = "<｜end▁of▁sentence｜>"


def call(name: str, **params: Any) -> str:
    """One invoke, rendered as V4 renders it (strings raw, other values as JSON)."""
    lines = []
    for key, value in params.items():
        if isinstance(value, str):
            lines.append(f'<{DSML}parameter name="{key}" string="true">{value}</{DSML}parameter>')
        else:
            raw = json.dumps(value, ensure_ascii=False)
            lines.append(f'<{DSML}parameter name="{key}" string="false">{raw}</{DSML}parameter>')
    # V4's template is "<invoke …>\n{arguments}\n</invoke>", so an invoke without arguments
    # keeps an empty line between its tags.
    return f'<{DSML}invoke name="{name}">\n' + "\n".join(lines) + f"\n</{DSML}invoke>"


def turn(reasoning: str, content: str = "", calls: tuple[str, ...] = ()) -> str:
    text = reasoning + "</think>" + content
    if calls:
        text += f"\n\n<{DSML}tool_calls>\n" + "\n".join(calls) + f"\n</{DSML}tool_calls>"
    return text + EOS


PYTHON_READ = turn(
    "The test run has two failures in tests/test_calc.py: test_divide expects divide(7, 2) "
    "== 3.5 but got 3, and test_mean expects mean([1, 2, 3]) == 2 but got 3.0. Both functions "
    "live in calc.py, so I will read it first.",
    calls=(call("read", file_path="calc.py"),),
)

PYTHON_FIX = [
    PYTHON_READ,
    turn(
        "divide() returns a // b. Floor division truncates 7 / 2 to 3, while the tests expect "
        "true division (3.5); -9 // 3 is still -3, so switching to a / b keeps that case.\n\n"
        "mean() returns sum(values) / (len(values) - 1). That is the sample-variance "
        "denominator, not the mean's: [1, 2, 3] gives 6 / 2 = 3.0, and a single value would "
        "divide by zero. It must divide by len(values).\n\nTwo small edits.",
        calls=(
            call("edit", file_path="calc.py", old_string="    return a // b\n",
                 new_string="    return a / b\n"),
            call("edit", file_path="calc.py",
                 old_string="    return sum(values) / (len(values) - 1)\n",
                 new_string="    return sum(values) / len(values)\n"),
        ),
    ),
    turn("Both edits are in. Running the tests to check.", calls=(call("run_tests"),)),
    turn(
        "All tests pass now, including the ones that already passed before.",
        "Fixed two bugs in `calc.py`:\n\n"
        "- `divide` used floor division (`a // b`), so `divide(7, 2)` returned `3`; it now "
        "uses true division.\n"
        "- `mean` divided by `len(values) - 1`; it now divides by `len(values)` (a single "
        "value no longer divides by zero).\n\nThe test suite passes.",
    ),
]

PYTHON_NOFIX = [
    PYTHON_READ,
    turn(
        "mean() divides by len(values) - 1; it should be len(values).\n\ndivide() fails with "
        "assert 3 == 3.5. The comparison is between an int and a float, so the result is "
        "probably just missing a float conversion. I will wrap it in float().",
        calls=(
            call("edit", file_path="calc.py",
                 old_string="    return sum(values) / (len(values) - 1)\n",
                 new_string="    return sum(values) / len(values)\n"),
            call("edit", file_path="calc.py", old_string="    return a // b\n",
                 new_string="    return float(a // b)\n"),
        ),
    ),
    turn("Running the tests.", calls=(call("run_tests"),)),
    turn(
        "test_mean passes now, but test_divide still fails: 3.0 == 3.5. I am not sure what "
        "the intended behaviour is, so I will stop and report.",
        "I fixed `mean` (it divided by `len(values) - 1`), but `test_divide` still fails: "
        "`divide(7, 2)` returns `3.0` and the test expects `3.5`. I could not make the whole "
        "suite pass.",
    ),
]

JS_READ = turn(
    "Four of the six tests in test/slugify.test.js fail: runs of punctuation are not all "
    "replaced (one gives 'hello-world! again'), the ends are not trimmed, and a custom "
    "separator is not applied everywhere. Let me read the implementation and the tests.",
    calls=(
        call("read", file_path="slugify.js"),
        call("read", file_path="test/slugify.test.js"),
    ),
)

JS_OLD = "    .replace(/[^a-z0-9]+/, separator)\n    .replace(/^-+|-+$/g, '');\n"

JS_FIX = [
    JS_READ,
    turn(
        "Two problems in slugify():\n\n1. /[^a-z0-9]+/ has no g flag, so only the first run "
        "of non-alphanumerics becomes a separator.\n2. The trim step hard-codes '-', so with "
        "separator '_' the leading and trailing underscores stay.\n\nSimplest robust fix: "
        "turn every run into a single space, trim, then join the words with the separator. "
        "split/join also avoids treating '$' in a separator as a replacement pattern.",
        calls=(
            call("edit", file_path="slugify.js", old_string=JS_OLD,
                 new_string="    .replace(/[^a-z0-9]+/g, ' ')\n    .trim()\n"
                 "    .split(' ')\n    .join(separator);\n"),
        ),
    ),
    turn("Edit applied. Running the tests.", calls=(call("run_tests"),)),
    turn(
        "All six tests pass.",
        "Fixed `slugify` in `slugify.js`: the pattern that replaces non-alphanumeric runs "
        "lacked the `g` flag, and trimming only removed `-`, not a custom separator. It now "
        "collapses every run to a space, trims, and joins the words with the separator. All "
        "tests pass.",
    ),
]

JS_NOFIX = [
    JS_READ,
    turn(
        "The replace() call has no g flag, so only the first run of punctuation or spaces is "
        "replaced. Adding the flag should fix the failures.",
        calls=(
            call("edit", file_path="slugify.js",
                 old_string="    .replace(/[^a-z0-9]+/, separator)\n",
                 new_string="    .replace(/[^a-z0-9]+/g, separator)\n"),
        ),
    ),
    turn("Running the tests.", calls=(call("run_tests"),)),
    turn(
        "Three of the four failures are gone, but the custom separator test still fails and "
        "I do not see why from here.",
        "I added the missing `g` flag, which fixed three tests. The custom separator test "
        "still fails (`' Snake case me '` with `_`), and I did not find the cause.",
    ),
]

C_READ = turn(
    "`make test` reports 3 passed, 2 failed: pop_order (the second pop does not return 2 "
    "and the stack never empties) and contains (stack_contains(&s, 2) is false right after "
    "pushing 2). Both are in stack.c.",
    calls=(call("read", file_path="stack.c"),),
)

C_CONTAINS = call(
    "edit", file_path="stack.c",
    old_string="    for (size_t i = 0; i + 1 < s->size; i++) {\n",
    new_string="    for (size_t i = 0; i < s->size; i++) {\n",
)

C_FIX = [
    C_READ,
    turn(
        "stack_pop() copies the top element but never decrements size, so every pop returns "
        "the same value and the stack never becomes empty. It should read items[--s->size]. "
        "stack_peek() has the identical line, which is right for peek, so the edit must "
        "include the following stack_peek header to be unique.\n\nstack_contains() loops "
        "while i + 1 < size, which skips the top element. It should loop while i < size.",
        calls=(
            call("edit", file_path="stack.c",
                 old_string="    *out = s->items[s->size - 1];\n    return 0;\n}\n\n"
                 "int stack_peek(",
                 new_string="    *out = s->items[--s->size];\n    return 0;\n}\n\n"
                 "int stack_peek("),
            C_CONTAINS,
        ),
    ),
    turn("Both edits applied. Rebuilding and running the tests.", calls=(call("run_tests"),)),
    turn(
        "5 passed, 0 failed.",
        "Fixed two bugs in `stack.c`:\n\n- `stack_pop` never decremented `size`, so it kept "
        "returning the top element; it now pops it.\n- `stack_contains` skipped the top "
        "element (`i + 1 < size`); it now checks every element.\n\nAll tests pass.",
    ),
]

C_NOFIX = [
    C_READ,
    turn(
        "stack_contains() loops while i + 1 < size and misses the top element; that one is "
        "clear. stack_pop() reads s->items[s->size - 1], which is the top, so pop looks "
        "right to me; the pop_order failure may come from contains being used somewhere. "
        "Fixing contains first.",
        calls=(C_CONTAINS,),
    ),
    turn("Running the tests.", calls=(call("run_tests"),)),
    turn(
        "contains passes, pop_order still fails. I do not see the problem in stack_pop.",
        "I fixed `stack_contains` (it skipped the top element). `pop_order` still fails and I "
        "could not find the cause, so the suite is not green.",
    ),
]

SESSIONS = {
    "python-calc.fix": PYTHON_FIX,
    "python-calc.nofix": PYTHON_NOFIX,
    "js-slugify.fix": JS_FIX,
    "js-slugify.nofix": JS_NOFIX,
    "c-stack.fix": C_FIX,
    "c-stack.nofix": C_NOFIX,
}


def render(turns: list[str]) -> str:
    """The JSON Lines text of one session."""
    return "".join(json.dumps({"completion": t}, ensure_ascii=False) + "\n" for t in turns)


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, turns in SESSIONS.items():
        (here / f"{name}.jsonl").write_text(render(turns), encoding="utf-8")


if __name__ == "__main__":
    main()
