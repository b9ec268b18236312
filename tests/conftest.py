"""Shared fixtures."""
import pytest


@pytest.fixture
def reference_lif(monkeypatch):
    """Run every neuron on the reference loop for this test (``SPIKEDRIVEN_LIF_BACKEND=torch``).

    A per-test setting, never an import-time one: pytest imports every test file before running any test, so an
    import-time ``os.environ`` write applies to the whole session (the suite would never run the fused kernels).
    """
    monkeypatch.setenv("SPIKEDRIVEN_LIF_BACKEND", "torch")
