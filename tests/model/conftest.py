import pytest
from rllama.model import Model


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    return Model(smollm2_path, n_ctx=2048, n_threads=2)


@pytest.fixture(scope="session")
def gemma3(gemma3_path):
    return Model(gemma3_path, n_ctx=2048, n_threads=2)
