"""ldmscale: the scaling study of latent diffusion models (Mei et al., 2024) as a toolkit.

Library API first; the ``ldmscale`` command line is a thin layer over it.
"""

__version__ = "0.1.0"
