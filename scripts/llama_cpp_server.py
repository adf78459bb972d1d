"""llama-cpp-python's OpenAI-compatible server for make test-remote, with one
change: a model served for embeddings (`"embedding": true` in the config file)
pools its tokens by their mean. The server's settings have no pooling option,
and a decoder GGUF carries none, so /v1/embeddings would answer one vector per
token instead of one per input, as the OpenAI API and vLLM do."""

import runpy

import llama_cpp

_init = llama_cpp.Llama.__init__


def _init_pooled(self, *args, **kwargs):
    if kwargs.get("embedding"):
        kwargs.setdefault("pooling_type", llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    _init(self, *args, **kwargs)


llama_cpp.Llama.__init__ = _init_pooled
runpy.run_module("llama_cpp.server", run_name="__main__")
