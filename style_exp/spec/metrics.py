"""The names of the quality metrics every run logs, for the code that reads them back.

They live here, below the engine, so that the tools that only read runs (``compare``,
the Pareto plot, a search's sweeper) name them without loading TensorFlow.
"""

CONTENT_DISTANCE = "quality/content_distance"
STYLE_DISTANCE = "quality/style_distance"
STYLE_SWD = "quality/style_swd"
