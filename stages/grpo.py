"""Stage: grpo (not built yet; see the project's issue tracker)."""
from stages import cli
from stages.unbuilt import fail


def main() -> None:
    fail("grpo", "GRPO training with TRL GRPOTrainer and the reward library (stages/rewards.py)")


if __name__ == "__main__":
    cli.run(main)
