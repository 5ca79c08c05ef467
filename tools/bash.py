"""`bash`: run a shell command in the repository, under the policy, without network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsv4.tools.base import (
    ToolContext,
    ToolResult,
    authorize,
    mark_mutation,
    object_schema,
    param,
)
from dsv4.tools.output import bounded_result
from dsv4.tools.process import CommandOutcome, run_command
from dsv4.tools.sandbox import detect_isolation, wrap


@dataclass
class BashTool:
    default_timeout: float = 120.0
    max_timeout: float = 600.0
    max_output_chars: int = 20_000
    """Longer output keeps its head and tail; the whole of it is saved to a file."""
    name: str = "bash"
    mutating: bool = True
    description: str = (
        "Run a bash command in the repository root and return its exit code and combined "
        "stdout/stderr. No network access. Commands outside the allow list (tests, read-only "
        "git, ls/cat/grep/find) may need approval. Long output is cut to its head and tail."
    )
    parameters: dict[str, Any] = field(
        default_factory=lambda: object_schema(
            ["command"],
            command=param("string", "The bash command line."),
            timeout=param("integer", "Seconds before it is killed (default 120, max 600)."),
        )
    )

    def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        command = args["command"]
        authorize(ctx, ctx.policy.decide_command(command), f"Run `{command}`?")
        timeout = min(max(1, args.get("timeout", self.default_timeout)), self.max_timeout)
        isolation = detect_isolation()
        mark_mutation(ctx, f"{self.name}: {command}")
        outcome = run_command(wrap(["bash", "-c", command], isolation), ctx.root, timeout)
        text = describe(outcome, timeout)
        if isolation.level == "partial":
            text += f"\n[note: {isolation.note}]"
        return bounded_result(
            outcome.exit_code == 0,
            text,
            ctx,
            self.max_output_chars,
            exit_code=outcome.exit_code,
            timed_out=outcome.timed_out,
            isolation=isolation.level,
        )


def describe(outcome: CommandOutcome, timeout: float) -> str:
    """The observation text: output first, then how the command ended."""
    output = outcome.output if outcome.output.strip() else "(no output)\n"
    if not output.endswith("\n"):
        output += "\n"
    if outcome.timed_out:
        return output + f"[killed after {timeout:g}s timeout, with every process it started]"
    return output + f"[exit code {outcome.exit_code}]"
