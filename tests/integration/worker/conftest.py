"""Fixtures for tests that drive a worker process directly: a model directory and a way to start workers."""

from tests.fixtures.worker_process import iris_model, model_dir, start_worker

__all__ = ["iris_model", "model_dir", "start_worker"]
