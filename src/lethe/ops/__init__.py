"""Tensor operations every layer above shares: token alignment, masked means, chunked vocabulary reductions
(tokens.py) and the fused output head (head.py). They depend on nothing in Lethe but the label convention."""
