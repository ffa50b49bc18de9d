from tests.training.conftest import corpus, data_cache, make_config, tokenizers  # noqa: F401 - shared fixtures
