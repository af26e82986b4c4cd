from tests.train.conftest import tiny  # noqa: F401  (the shared tiny base and data)
