"""uniad_mini.kernels: fused GPU kernels (Triton) for UniAD's neighbor-masked attention."""
