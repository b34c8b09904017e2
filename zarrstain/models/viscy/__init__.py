"""VisCy's family: its architecture and Lightning checkpoints (:mod:`.family`) and their cards
(:mod:`.card`).

Nothing is imported here, so that the package can be named without loading torch.
"""
