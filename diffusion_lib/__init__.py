"""diffusion_lib: the library behind the executable course on diffusion models."""

from .schedules import PARAMETERISATIONS, PREDICTION_TYPES, FlowPath, NoiseSchedule, convert_prediction
from .samplers import (Trajectory, classifier_free_guidance, ddim_invert, ddim_sample, ddpm_sample,
                       dpm_solver_sample, flow_euler_sample, flow_heun_sample, make_timesteps, sample)
from .data import DatasetInfo, dataset_info, load_dataset, toy_2d
from .models import (VAE, Classifier, ClassifierConfig, UNet, UNetConfig, VAEConfig, measure_latent_scale,
                     vae_loss)
from .training import TrainConfig, load_config, train
from .objective import diffusion_loss, flow_matching_loss, train_step
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .latent import decode_latents, encode_dataset, latent_unet_config, load_vae
from .pipelines.guidance_sweep import guidance_sweep
from .checkpoint import load_classifier
