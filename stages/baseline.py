"""Stage: baseline (not built yet; see the project's issue tracker)."""
from stages import cli
from stages.unbuilt import fail


def main() -> None:
    fail("baseline", "base-model evaluation (stages/modeling.py, stages/generation.py, stages/scoring.py)")


if __name__ == "__main__":
    cli.run(main)
