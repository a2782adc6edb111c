"""Backends for the heavy stateless encoder and the memory attention: PyTorch, ONNX Runtime, TensorRT.

Public entry points (imported from their modules, so importing one backend never pulls in another):
``factory.create_engines(model, EngineSettings(...)) -> Engines`` (selection + export + engine
cache), ``base.EncoderEngine`` / ``base.MemoryAttentionEngine`` (drop-ins for the model's encoders /
``model.condition_on_memory``), ``base.EngineUnavailable``. The `m4sam export`, `build-engine`
and `bench` verbs live in ``m4sam_ros.tools``.
"""
