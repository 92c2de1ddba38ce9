"""Hydra finds sweepers in the ``hydra_plugins`` namespace: this makes ``hydra/sweeper=optuna``
this project's Optuna search (``style_exp/app/search.py``; Hydra's own plugin pins
optuna<3, which cannot keep a study in SQLite with SQLAlchemy 2)."""

from hydra.core.config_store import ConfigStore

from style_exp.app.search import SearchSweeper, SearchSweeperConf


class OptunaSweeper(SearchSweeper):
    """The sweeper ``hydra/sweeper=optuna`` instantiates."""


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=SearchSweeperConf,
                             provider="style_exp")
