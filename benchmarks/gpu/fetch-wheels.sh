#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), before using the lent GPU machine: downloads into
# ./.whl/ (ignored by git) the wheels elite needs that the GPU machine's image lacks (diffusers,
# sqlite-utils, typer 0.29 and pydantic, platformdirs, ...), for its Python 3.12 on x86-64 Linux.
# About 45 MB; the device tool carries it with `carry: [".whl"]` (64 MiB limit with the repo).
# xformers cannot travel (its wheel alone is over the limit and must match the machine's torch),
# so GPU figures are for PyTorch SDPA unless the machine has xformers.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl \
    diffusers==0.42.1 sqlite-utils typer==0.29.2 platformdirs
du -sh .whl
