"""An example seqlab plugin package: one mixer, `seqlab_toy.ema:EMA`."""
