"""Published architectures of the target bases, for measurements with random weights (there is no hub here):
memory and speed depend on a model's shape, not on its values (benchmarks/gpu_train.py, benchmarks/gguf_cuda.py)."""

from __future__ import annotations

# Qwen2.5-7B(-Instruct): hidden 3584, 28 layers, GQA 28/4, MLP 18944, vocabulary 152,064, untied LM head
QWEN25_7B_SHAPE = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_word_embeddings=False)
# the same family in toy size, for running those scripts on a CPU (their --smoke)
TOY_QWEN_SHAPE = dict(QWEN25_7B_SHAPE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=8192)
