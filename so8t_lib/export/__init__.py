"""GGUF export: the SO8T file format (``gguf_meta``), the writer (``gguf_writer``) and quantization with
llama.cpp (``quantize``)."""
