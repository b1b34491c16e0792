"""Stage: eval (not built yet; see the project's issue tracker)."""
from stages import cli
from stages.unbuilt import fail


def main() -> None:
    fail("eval", "evaluation of the sft and grpo models and metrics/report.md")


if __name__ == "__main__":
    cli.run(main)
