"""Beyond one machine: the launchers' presets (Ray, SLURM) and the team tracking server."""
