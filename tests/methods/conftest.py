"""Method tests build methods from gin-configurable classes: each test starts and ends with a clean config."""
from pathlib import Path

import gin
import numpy as np
import pytest

from kipjax import checkpoints, partitioning
from kipjax.trainer import Trainer


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def assert_same_rows():
    """`assert_same_rows(batch, own)`: `batch` holds the rows of `own` (dicts of equal-length arrays) in some
    order, feature by feature; how a SeqIO task's shuffled epoch-sized batch is checked against a method's own
    featurized examples."""
    def check(batch, own):
        assert set(batch) == set(own)

        def rows(arrays):
            n = len(next(iter(arrays.values())))
            return sorted(tuple(np.concatenate([np.ravel(arrays[k][i]).astype(np.int64) for k in sorted(arrays)]))
                          for i in range(n))

        assert rows(batch) == rows(own)
    return check


@pytest.fixture
def save_initial_checkpoint():
    """`save_initial_checkpoint(method, model_dir)`: a step-0 checkpoint of freshly initialised params with the
    method's current state, laid out as `python -m kipjax.train` leaves it (no training)."""
    def save(method, model_dir):
        trainer = Trainer(method, model_dir=str(model_dir), train_steps=1, train_epochs=None)
        state = trainer.initial_state(trainer.device_batch(trainer.peek_batch()))
        ckpt = checkpoints.Checkpointer(str(Path(model_dir) / "checkpoints"))
        ckpt.save(0, state, {**trainer.feed.state.to_json(), "hooked_epoch": 0},
                  partitioning.put_replicated(method.state_dict(), trainer.mesh))
        ckpt.close()
        return state
    return save
