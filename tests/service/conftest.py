"""The service fixtures reuse the pipeline's speech fixtures."""

from tests.pipeline.conftest import conversation  # noqa: F401  (a fixture)
