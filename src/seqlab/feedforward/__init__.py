"""Feed-forward layers of a Block, one per module: `swiglu` (the dense SwiGLU) and `moe`
(top-k routed SwiGLU experts). `ModelConfig.mlp` chooses one; `seqlab.model.build_feedforward`
builds it."""
