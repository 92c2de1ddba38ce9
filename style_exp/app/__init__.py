"""The command line and everything recorded: the only layer that sees Hydra or MLflow.
``parse`` turns the config into a RunSpec; below it nothing reads the config."""
