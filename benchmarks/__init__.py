"""Reproducible speed and memory benchmarks for elite (see benchmarks/README.md).

Run each as a script from the repository root, e.g. `python benchmarks/generate.py --real`.
"""
