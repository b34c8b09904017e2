"""Diffusion: the family and its samplers (:mod:`.family`), its options (:mod:`.options`, no
torch: read by the CLI), schedules, sample chains, the noisy-image classifier for guidance and
FluoGen-style control branches.

Nothing is imported here, so that :mod:`.options` loads without torch.
"""
