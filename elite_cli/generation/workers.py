"""Which process am I: one `elite gen` spread over processes by `accelerate launch` or `torchrun`.

Hugging Face accelerate sets up the process group (NCCL on GPUs, gloo on CPUs); we only ask it
for our rank, hand the plan from the main process to the others, and wait at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Workers:
    rank: int = 0
    world: int = 1
    device: str | None = None  # the device this process must use, when launched per GPU
    _state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """The main process's `value`, on every process."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def smallest(self, value: int) -> int:
        """The smallest of every process's `value` (e.g. what fits each GPU), on every process."""
        if self.world == 1:
            return value
        from accelerate.utils import gather_object

        return min(gather_object([value]))

    def collect(self, values: list) -> list:
        """Every process's `values` list, concatenated in rank order, on every process."""
        if self.world == 1:
            return list(values)
        from accelerate.utils import gather_object

        return gather_object(values)

    def wait(self) -> None:
        if self.world > 1:
            self._state.wait_for_everyone()


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def join_workers(requested_device: str) -> Workers:
    """A single process unless started by a launcher (WORLD_SIZE > 1)."""
    if launched_world_size() <= 1:
        return Workers()
    import torch
    from accelerate import PartialState

    on_cpu = requested_device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    device = None if on_cpu else str(state.device)
    return Workers(rank=state.process_index, world=state.num_processes, device=device, _state=state)


def launch_command(processes: int, argv: list[str]) -> list[str]:
    """`accelerate launch` re-running this very command line (minus --gpus) on `processes` GPUs."""
    import sys

    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            *(["--multi_gpu"] if processes > 1 else []), "-m", "elite_cli", *argv]


def without_gpus_option(argv: list[str]) -> list[str]:
    """The command line with `--gpus X` / `--gpus=X` removed."""
    cleaned: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument == "--gpus":
            skip = True
            continue
        if argument.startswith("--gpus="):
            continue
        cleaned.append(argument)
    return cleaned
