"""`run_tests`: run the project's test command and summarise the outcome."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dsv4.tools.base import ToolContext, ToolError, ToolResult, authorize, object_schema, param
from dsv4.tools.bash import describe
from dsv4.tools.output import bounded_result
from dsv4.tools.process import run_command
from dsv4.tools.sandbox import detect_isolation, wrap

# Final summary lines of common runners: pytest, unittest, cargo, go, jest.
_SUMMARY_PATTERNS = (
    re.compile(r"^=+ (.*\b(passed|failed|error|errors|skipped|no tests ran)\b.*) =+$"),
    re.compile(
        r"^(\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b.* in [\d.]+s.*)$"
    ),
    re.compile(r"^(Ran \d+ tests? in .*)$"),
    re.compile(r"^((OK|FAILED)( \(.*\))?)$"),
    re.compile(r"^(test result: .*)$"),
    re.compile(r"^(Tests?:\s+.*)$"),
    re.compile(r"^((ok|FAIL)\s+\S+.*)$"),
)


@dataclass
class RunTestsTool:
    timeout: float = 900.0
    max_output_chars: int = 20_000
    name: str = "run_tests"
    mutating: bool = False
    description: str = (
        "Run the project's tests (the configured test command, or the given one) and return "
        "the exit code, a summary line and the output (head and tail when long)."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            [],
            command=param(
                "string",
                "Test command to run instead of the configured one, e.g. "
                "`pytest tests/test_x.py -x`.",
            ),
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        command = args.get("command") or ctx.test_command
        if not command:
            raise ToolError(
                "No test command is configured; pass one as `command` (e.g. `pytest -q`)"
            )
        if "command" in args and args["command"] != ctx.test_command:
            # The configured command came from the user; one the model wrote goes to the policy.
            authorize(ctx, ctx.policy.decide_command(command), f"Run tests with `{command}`?")
        outcome = run_command(
            wrap(["bash", "-c", command], detect_isolation()), ctx.root, self.timeout
        )
        summary = summarise(outcome.output) or (
            "timed out" if outcome.timed_out else "no summary line found"
        )
        passed = outcome.exit_code == 0
        head = f"Tests {'passed' if passed else 'FAILED'} ({command}): {summary}\n"
        return bounded_result(
            passed,
            head + describe(outcome, self.timeout),
            ctx,
            self.max_output_chars,
            exit_code=outcome.exit_code,
            passed=passed,
            summary=summary,
            command=command,
            timed_out=outcome.timed_out,
        )


def summarise(output: str) -> str | None:
    """The last summary line a known test runner printed, if any."""
    for line in reversed(output.splitlines()):
        for pattern in _SUMMARY_PATTERNS:
            match = pattern.match(line.strip())
            if match:
                return match.group(1).strip() if pattern.groups else line.strip()
    return None
