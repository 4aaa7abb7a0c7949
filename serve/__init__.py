"""The extraction API: a FastAPI gateway in front of vLLM serving one LoRA adapter per live schema release.

The gateway owns everything a user touches (keys, limits, schema binding, output validation); vLLM is an
internal component bound to loopback. Entry points: `create_app(settings)` and `run_server(settings)`.
"""
