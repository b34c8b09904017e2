"""The pytorch_fnet family: its architecture (:mod:`.family`), pytorch_fnet checkpoints
(:mod:`.checkpoint`) and the lean inference U-Net (:mod:`.inference`).

Nothing is imported here, so that the package can be named without loading torch.
"""
