"""Run several `elite` commands in one fresh process (through typer's CliRunner, as the in-process
tests do) and print their results as JSON lines.

The Hub tests need a fresh process for each Hugging Face environment (huggingface_hub reads
HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE once, when imported); running a scenario's
commands in one process, instead of one process each, saves the repeated imports of torch.

Usage: python tests/elite_commands.py '[["add", "cat.png"], ["gen", "<cat>"]]'
"""

import json
import sys

from typer.testing import CliRunner

from elite_cli.commands import app


def main() -> None:
    runner = CliRunner()
    for args in json.loads(sys.argv[1]):
        result = runner.invoke(app, args)
        print(json.dumps({"args": args, "exit_code": result.exit_code, "stdout": result.stdout,
                          "stderr": result.stderr}), flush=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception


if __name__ == "__main__":
    main()
