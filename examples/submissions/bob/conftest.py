import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    pass  # bob experimenting with hooks
