"""Stage: sft (not built yet; see the project's issue tracker)."""
from stages import cli
from stages.unbuilt import fail


def main() -> None:
    fail("sft", "LoRA supervised fine-tuning with TRL SFTTrainer")


if __name__ == "__main__":
    cli.run(main)
