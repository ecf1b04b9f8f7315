"""Registers the session fixture `real_vllm` for the tests in this directory."""

from .fixtures import real_vllm

__all__ = ["real_vllm"]
