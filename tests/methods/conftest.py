"""Method tests build methods from gin-configurable classes: each test starts and ends with a clean config."""
import gin
import numpy as np
import pytest


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
