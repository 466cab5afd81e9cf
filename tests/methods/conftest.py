"""Method tests build methods from gin-configurable classes: each test starts and ends with a clean config."""
import gin
import pytest


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()
