"""Creating the experiment: parallel jobs of one sweep must agree on one experiment."""

from mlflow.tracking import MlflowClient

from style_exp.app.tracking import EXPERIMENT_KIND, experiment_id


def test_the_loser_of_the_creation_race_takes_the_winners_experiment(tmp_path, monkeypatch):
    """Two jobs both see no experiment; the second to create it is refused by the store.

    On a server (PostgreSQL) no file lock orders them, so the refusal must be taken as
    'someone else made it', not as the job's failure.
    """
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    winner = MlflowClient(uri).create_experiment("sweep")
    looked_up = MlflowClient.get_experiment_by_name
    calls = []

    def before_the_winner_committed(self, name):
        calls.append(name)
        return None if len(calls) == 1 else looked_up(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", before_the_winner_committed)
    assert experiment_id(uri, "sweep") == winner
    assert len(calls) == 2
    tags = MlflowClient(uri).get_experiment(winner).tags
    assert EXPERIMENT_KIND.items() <= tags.items()


def test_a_new_experiment_is_created_once_with_its_kind(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = experiment_id(uri, "fresh")
    assert experiment_id(uri, "fresh") == first
    assert EXPERIMENT_KIND.items() <= MlflowClient(uri).get_experiment(first).tags.items()
