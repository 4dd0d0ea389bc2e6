"""Generation runs: jobs, their plan over output files, batches, several processes."""
