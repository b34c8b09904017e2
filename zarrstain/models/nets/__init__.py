"""Pure networks (torch modules), with no knowledge of cards, tiling or stores: the U-Nets of
pytorch_fnet and VisCy, UNeXt2 and its FCMAE, the diffusion denoiser. Families build them.
"""
