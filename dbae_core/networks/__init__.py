"""Networks of DBAE (dbae-method.md §4): encoder q_φ(z|x0), decoder Dec(z) = x_T, denoiser F_θ."""

from dbae_core.networks.decoder import Decoder, DecoderConfig
from dbae_core.networks.encoder import Encoder, EncoderConfig, Posterior
from dbae_core.networks.unet import UNet, UNetConfig

__all__ = ["Decoder", "DecoderConfig", "Encoder", "EncoderConfig", "Posterior", "UNet", "UNetConfig"]
