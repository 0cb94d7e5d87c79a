"""The ``continuous`` engine: in-flight batching, requests join and leave the decode batch at every step.

:mod:`.engine` schedules over a paged KV cache (:mod:`.blocks` keeps the free blocks, :mod:`.slots` the block
tables and the model's steps); decode steps are captured as CUDA graphs, with Triton kernels for the fused decode
step (:mod:`.kernels`); :mod:`.start` builds both for a deployment.
"""
