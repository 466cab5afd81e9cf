"""The learning-rate schedule's warmup: given in steps or as a fraction of the run."""
import pytest

from kipjax.optim import learning_rate_schedule


def test_warmup_as_a_fraction_of_the_run():
    schedule = learning_rate_schedule(peak_value=1.0, total_steps=200, warmup_fraction=0.1, decay="linear")
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(0.5)
    assert float(schedule(20)) == pytest.approx(1.0)
    assert float(schedule(110)) == pytest.approx(0.5)  # halfway through the 180 decay steps
    by_steps = learning_rate_schedule(peak_value=1.0, total_steps=200, warmup_steps=20, decay="linear")
    assert [float(by_steps(s)) for s in (5, 20, 150)] == pytest.approx([float(schedule(s)) for s in (5, 20, 150)])
