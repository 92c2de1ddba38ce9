"""What a run is, as typed values: the settings, the RunSpec, the errors. Imports no
TensorFlow, Hydra or MLflow, so every layer may hold these."""
