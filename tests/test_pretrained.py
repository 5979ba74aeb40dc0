"""A cell that names a local diffusers from_pretrained folder: a tiny random latent DiT
pipeline (DiT + AutoencoderKL + DDIM scheduler, saved by diffusers itself) runs through the
suite offline, its samples decoded by the VAE before FID."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bench.cache import ArtifactCache
from bench.cell import Cell, cell_model_key
from bench.grid import main
from bench.pipeline import build_pipeline
from models.pretrained import describe, load_pretrained

diffusers = pytest.importorskip("diffusers")


def _save_pipeline(folder, *, seed=0, prediction_type="epsilon", safe=True) -> None:
    """A latent DiT for 8x8 digits: a 2-block VAE (factor 2) makes 4x4x4 latents, patch 1."""
    torch.manual_seed(seed)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=3, sample_size=4, patch_size=1, num_embeds_ada_norm=10, norm_num_groups=1,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
        latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=8,
    )  # fmt: skip
    sched = diffusers.DDIMScheduler(beta_schedule="linear", prediction_type=prediction_type)
    pipe = diffusers.DiTPipeline(transformer=dit, vae=vae, scheduler=sched)
    pipe.save_pretrained(folder, safe_serialization=safe)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrained") / "tiny-dit"
    _save_pipeline(path)
    return path


def test_a_folder_is_described_from_its_configs(folder):
    spec = describe(folder)
    assert spec.latent_shape == (4, 4, 4) and spec.image_shape == (1, 8, 8)
    assert spec.size["depth"] == 3 and spec.size["arch"] == "dit" and spec.num_classes == 10
    want = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler").betas.double()
    assert torch.allclose(spec.betas(), want, atol=1e-7)
    assert re.fullmatch(r"pretrained-[0-9a-f]{16}", spec.key)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_each_beta_schedule_equals_diffusers(tmp_path, kind):
    _save_pipeline(tmp_path)
    diffusers.DDPMScheduler(beta_schedule=kind).save_pretrained(tmp_path / "scheduler")
    want = diffusers.DDPMScheduler.from_pretrained(tmp_path / "scheduler").betas.double()
    assert torch.allclose(describe(tmp_path).betas(), want, atol=1e-7)


def test_latent_samples_are_decoded_by_the_vae_before_any_metric(folder, cache, one_thread):
    pipe = build_pipeline(Cell(model=str(folder), samples=4, steps=2), cache, progress=False)
    assert pipe.shape == (4, 4, 4)
    images, _ = pipe.sample(4, seed=0)
    assert images.shape == (4, 1, 8, 8)
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae")
    z = torch.randn(3, 4, 4, 4)
    with torch.inference_mode():
        want = vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
    assert torch.allclose(pipe.base.decode(z), want, atol=1e-6)


def test_a_pretrained_cell_runs_exits_and_caches_end_to_end(folder, tmp_path, one_thread):
    from bench.run import run_cell

    cache = ArtifactCache(tmp_path / "cache")
    cell = Cell(model=str(folder), samples=16, steps=4, policy="ase", target_flop_ratio=0.7)
    rec = run_cell(cell, cache)
    assert rec["fid"] > 0 and rec["model_key"] == describe(folder).key
    assert rec["flop_ratio_per_call"] < 1 and rec["psnr"] is not None
    assert rec["params"] == sum(
        p.numel() for p in load_pretrained(describe(folder))[0].parameters()
    )


def test_new_weights_in_the_same_folder_make_another_model_key(tmp_path):
    _save_pipeline(tmp_path / "m", seed=0)
    cell = Cell(model=str(tmp_path / "m"))
    before = cell_model_key(cell)
    _save_pipeline(tmp_path / "m", seed=1)
    assert cell_model_key(cell) != before and cell.key == Cell(model=str(tmp_path / "m")).key


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"recipe": "uem"}, "pretrained weights, run as loaded: recipe 'uem'"),
        ({"prune_ratio": 0.3}, "run as loaded: prune_ratio"),
        ({"policy": "uem"}, "needs recipe uem"),
        ({"dataset": "mnist"}, r"makes \(1, 8, 8\) images, data set 'mnist' holds \(1, 28, 28\)"),
        ({"cache": "deepcache"}, "needs long_skips"),
    ],
)
def test_what_pretrained_weights_cannot_do_is_refused_when_read(folder, fields, match):
    with pytest.raises(ValueError, match=match):
        Cell(model=str(folder), **fields)


def test_bad_folders_say_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        Cell(model=str(tmp_path / "missing"))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="'UNet2DModel'; supported denoiser classes: DiT"):
        Cell(model=str(tmp_path / "unet"))
    with pytest.raises(ValueError, match="or a local diffusers from_pretrained folder"):
        Cell(model="tiny-dit")
    _save_pipeline(tmp_path / "v", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="predicts 'v_prediction'"):
        Cell(model=str(tmp_path / "v"))


def _edit_config(path, **changes) -> None:
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, **changes}))


def test_configs_the_adapter_cannot_run_are_refused_and_the_hub_class_name_is_read(tmp_path):
    _save_pipeline(tmp_path / "m")
    config = tmp_path / "m" / "transformer" / "config.json"
    _edit_config(config, _class_name="Transformer2DModel")  # how a Hub snapshot names a DiT
    assert describe(tmp_path / "m").arch == "dit"
    load_pretrained(describe(tmp_path / "m"))
    _edit_config(config, norm_type="ada_norm_single")
    with pytest.raises(ValueError, match=r"adaLN-Zero DiTs.*'ada_norm_single'"):
        Cell(model=str(tmp_path / "m"))
    _edit_config(config, norm_type="ada_norm_zero", sample_size=None)
    with pytest.raises(ValueError, match=r"lacks \['sample_size'\]"):
        Cell(model=str(tmp_path / "m"))
    _edit_config(config, sample_size=4)
    _edit_config(
        tmp_path / "m" / "scheduler" / "scheduler_config.json", rescale_betas_zero_snr=True
    )
    with pytest.raises(ValueError, match="zero terminal SNR"):
        Cell(model=str(tmp_path / "m"))


def test_pickled_weights_are_never_loaded(tmp_path):
    _save_pipeline(tmp_path / "p", safe=False)  # diffusion_pytorch_model.bin: a pickle
    assert list((tmp_path / "p").glob("*/*.bin"))
    with pytest.raises(ValueError, match="safetensors only"):
        load_pretrained(describe(tmp_path / "p"))


def test_the_grid_refuses_a_missing_folder_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "sweep.toml"
    cfg.write_text(f'[[cell]]\nmodel = "{tmp_path / "nothing"}"\n')
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
