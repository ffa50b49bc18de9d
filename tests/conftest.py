import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_torch_state():
    """Every test starts from the same seed and default dtype, whatever the last one did."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


def pytest_collection_modifyitems(config, items):
    # The slow (multi-process) tests first: the workers of `pytest -n 2` end on short tests, not
    # one of them idle while the other runs a minute-long drill that was collected last.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
