"""A trial whose training diverges (NumericsError: NaN/inf loss) is failed and recorded, and the
search goes on; it used to stop the whole search. Other errors (ConfigError) stay fatal, and a
search where every trial diverges still ends, with an error."""

import logging

import pytest

from slimkit.errors import ConfigError, NumericsError
from slimkit.search.study import DIVERGED_ATTR, open_study, run_until, trial_counts

TASK = {"kind": "nas", "config": {"strategy": "random", "n_trials": 5, "seed": 0}}


def diverges_on_odd_trials(trial) -> float:
    x = trial.suggest_float("lr", 0.0, 1.0)
    if trial.number % 2:
        raise NumericsError(f"the loss is NaN at lr={x:.3f}")
    return x


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_diverging_trial_is_recorded_and_the_search_goes_on(tmp_path):
    study = open_study("s", f"sqlite:///{tmp_path / 's.db'}", ["maximize"], TASK)
    seen = Lines()  # a handler of Optuna's logger, as its own stderr one (run_until filters both)
    logging.getLogger("optuna").addHandler(seen)
    try:
        run_until(study, diverges_on_odd_trials, 5)
    finally:
        logging.getLogger("optuna").removeHandler(seen)
    counts = trial_counts(study)
    # the budget counts the diverged trials: 5 finished, 3 complete (0, 2, 4), 2 diverged
    assert (counts.complete, counts.pruned, counts.diverged) == (3, 0, 2)
    assert str(counts) == "5 finished trials (3 complete, 0 pruned, 2 diverged)"
    t1 = study.trials[1]
    assert t1.state.name == "FAIL" and "loss is NaN" in t1.user_attrs[DIVERGED_ATTR]
    # one line per diverged trial, naming it, its parameters and the error; no traceback
    lines = [r.getMessage() for r in seen.records if r.getMessage().startswith("Trial 1 ")]
    assert len(lines) == 1 and "'lr'" in lines[0] and "NumericsError" in lines[0], lines
    assert not any(r.exc_info for r in seen.records)


def test_a_config_error_still_stops_the_search(tmp_path):
    study = open_study("s", f"sqlite:///{tmp_path / 's.db'}", ["maximize"], TASK)

    def bad(trial):
        trial.suggest_float("lr", 0.0, 1.0)
        raise ConfigError("bad input")

    with pytest.raises(ConfigError, match="bad input"):
        run_until(study, bad, 5)


def test_a_search_where_every_trial_diverges_ends_with_an_error_and_no_study(tmp_path):
    db = tmp_path / "s.db"
    study = open_study("s", f"sqlite:///{db}", ["maximize"], TASK)

    def always(trial):
        trial.suggest_float("lr", 0.0, 1.0)
        raise NumericsError("the loss is NaN")

    with pytest.raises(NumericsError, match=r"every trial of study 's' diverged \(3 trials"):
        run_until(study, always, 3)
    assert not db.exists()  # a study this run created, with nothing finished, is removed
