import pytest
import torch

from conftest import tiny_config
from lqae_cli.checkpoint import CheckpointError, load_model, save_model
from lqae_cli.model import LQAE


def test_shapes(tiny_model):
    x = torch.rand(3, 3, 16, 16)
    ids = tiny_model.encode(x)
    assert ids.shape == (3, 4, 4) and ids.dtype == torch.long
    y = tiny_model.decode(ids)
    assert y.shape == (3, 3, 16, 16) and 0 <= y.min() and y.max() <= 1


def test_encode_deterministic_across_batch_sizes(tiny_model):
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    full = tiny_model.encode(x)
    assert torch.equal(full, tiny_model.encode(x))
    assert torch.equal(torch.cat([tiny_model.encode(c) for c in x.split(3)]), full)
    assert torch.equal(tiny_model.encode(x[4:5]), full[4:5])
    fast = tiny_model.encode(x, "bf16")  # bf16 words: deterministic too, whatever the batch size
    assert torch.equal(torch.cat([tiny_model.encode(c, "bf16") for c in x.split(3)]), fast)
    with pytest.raises(ValueError):
        tiny_model.encode(x, "fp16")


def test_cpu_inference_runs_a_large_batch_in_nearly_equal_parts(tiny_lm, monkeypatch):
    import lqae_cli.model as model_module

    torch.manual_seed(0)
    enc = LQAE(tiny_config(tiny_lm), tiny_lm).encoder.eval()
    x = torch.rand(37, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    parts, layers = [], model_module.Encoder.layers
    monkeypatch.setattr(model_module.Encoder, "layers", lambda self, p, *a: parts.append(len(p)) or layers(self, p, *a))
    monkeypatch.setattr(model_module, "CPU_PART", 16)
    with torch.no_grad():
        out = enc(x)
        assert parts == [13, 12, 12]                     # nearly equal parts, none small
        whole = layers(enc, x)
        # the same numbers as the whole batch at once with AVX-512 kernels; AVX2 kernels round the last bits
        # by the number of rows
        assert torch.allclose(out, whole, rtol=0, atol=1e-5)
        parts.clear()
        enc(x[:16])
        assert parts == [16]
    parts.clear()
    enc.train()                                          # training: one pass (batch statistics), autograd intact
    enc(x).sum().backward()
    assert parts == [37] and enc.patch.weight.grad is not None


def test_words_are_the_same_with_and_without_parts(tiny_model, monkeypatch):
    import lqae_cli.model as model_module

    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    in_parts = tiny_model.encode(x)
    monkeypatch.setattr(model_module, "CPU_PART", 1000)
    assert torch.equal(in_parts, tiny_model.encode(x))


def test_blocks_compute_in_place_without_autograd_and_give_the_same_numbers(tiny_lm):
    from lqae_cli.model import Block

    torch.manual_seed(0)
    block, x = Block(32, 4), torch.randn(5, 9, 32)
    with torch.no_grad():
        fast = block(x)
    plain = block(x)                                     # autograd on: nothing overwritten
    assert torch.equal(fast, plain.detach())
    plain.sum().backward()
    assert block.mlp[0].weight.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(x).dtype == torch.float32           # an fp32 residual stream stays fp32 under autocast


def test_encode_does_not_load_lm_layers(tiny_lm):
    from lqae_cli.lm import LanguageModel

    lm = LanguageModel.load(str(tiny_lm.lm_dir))
    model = LQAE(tiny_config(lm), lm).eval()
    model.encode(torch.rand(2, 3, 16, 16))
    assert "transformer" not in lm.__dict__  # the LM's layers were never built
    model.decode(torch.full((1, 4, 4), int(lm.allowed_ids("all")[0])))
    assert "transformer" in lm.__dict__


def test_whole_words_rule_honoured(tiny_lm):
    model = LQAE(tiny_config(tiny_lm, vocab_rule="words"), tiny_lm).eval()
    ids = model.encode(torch.rand(16, 3, 16, 16))
    tokens = set(tiny_lm.tokens(ids.flatten().tolist()))
    assert tokens and all(t.isalpha() and t.isascii() and t.islower() for t in tokens)


def test_training_forward_reports_losses_and_stats(tiny_model):
    tiny_model.train()
    out = tiny_model(torch.rand(4, 3, 16, 16))
    for k in ("loss", "mse", "commit", "entropy", "decorrelation", "psnr", "distinct", "perplexity", "top_share"):
        assert k in out
    out["loss"].backward()
    assert all(p.grad is None for p in tiny_model.lm.transformer.parameters())


def test_reconstruction_gradient_reaches_encoder_through_lm(tiny_model):
    """MSE alone: its only path to the encoder is decoder -> frozen LM -> straight-through."""
    tiny_model.train()
    x = torch.rand(4, 3, 16, 16)
    q = tiny_model.quantizer(tiny_model.encoder(x * 2 - 1))
    rec = tiny_model.decoder(tiny_model.run_lm(q.embeds))
    torch.nn.functional.mse_loss(rec, x * 2 - 1).backward()
    assert tiny_model.encoder.head.weight.grad.abs().sum() > 0
    assert tiny_model.encoder.patch.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_model.lm.transformer.parameters())


def test_log_mse_is_minus_mean_psnr_and_weighs_smooth_images_up():
    from lqae_cli.model import LOG_MSE_FLOOR, LOG_MSE_SCALE, reconstruction_loss

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    err = torch.stack([torch.full((3, 8, 8), 0.01), torch.full((3, 8, 8), 0.3)])   # a smooth-ish and a busy image
    rec = (x + err).requires_grad_()
    per_image = err.pow(2).flatten(1).mean(1)
    expected = LOG_MSE_SCALE * torch.log(per_image + LOG_MSE_FLOOR).mean()
    loss, mse = reconstruction_loss(rec, x, "log_mse")
    assert torch.allclose(loss, expected) and torch.allclose(mse, per_image.mean()) and not mse.requires_grad
    loss.backward()
    log_grad = rec.grad.flatten(1).norm(dim=1)
    rec.grad = None
    reconstruction_loss(rec, x, "mse")[0].backward()
    mse_grad = rec.grad.flatten(1).norm(dim=1)
    # plain MSE pushes the busy image 30x harder than the small error; log-MSE pushes the small error harder
    assert mse_grad[1] / mse_grad[0] > 29 and log_grad[0] > log_grad[1]
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        reconstruction_loss(rec, x, "l1")


def test_weighted_reconstruction_loss_counts_weighted_pixels_and_reports_the_plain_mse():
    from lqae_cli.model import LOG_MSE_FLOOR, LOG_MSE_SCALE, reconstruction_loss

    x = torch.zeros(2, 3, 4, 4)
    rec = x.clone()
    rec[:, :, 0, :] = 0.5                                                  # error only in the top row
    ones = torch.ones(1, 1, 4, 4)
    for kind in ("mse", "log_mse"):
        assert torch.equal(reconstruction_loss(rec, x, kind, ones)[0], reconstruction_loss(rec, x, kind)[0])
    w = torch.ones(1, 1, 4, 4)
    w[:, :, 0, :] = 4.0                                                    # the top row counts 4x
    loss, mse = reconstruction_loss(rec, x, "mse", w)
    assert torch.allclose(loss, torch.tensor(0.25 * 4 / 4)) and torch.allclose(mse, torch.tensor(0.25 / 4))
    loss, _ = reconstruction_loss(rec, x, "log_mse", w)
    assert torch.allclose(loss, LOG_MSE_SCALE * torch.log(torch.tensor(0.25 + LOG_MSE_FLOOR)))


def test_unknown_recon_loss_in_config_refused(tiny_lm):
    with pytest.raises(ValueError, match="log_mse"):
        LQAE(tiny_config(tiny_lm, recon_loss="huber"), tiny_lm)


def test_decoder_reads_several_lm_layers(tiny_lm):
    torch.manual_seed(0)
    model = LQAE(tiny_config(tiny_lm, decoder_lm_layers=2), tiny_lm)
    assert model.decoder.inp.in_features == 2 * tiny_lm.hidden_size
    x = torch.rand(4, 3, 16, 16)
    model(x)["loss"].backward()
    grad = model.decoder.inp.weight.grad
    assert grad[:, :tiny_lm.hidden_size].abs().sum() > 0  # the first layer's output reaches the image
    assert model.eval().decode(model.encode(x)).shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="2 layers"):
        LQAE(tiny_config(tiny_lm, decoder_lm_layers=3), tiny_lm)


def test_reading_more_lm_layers_starts_where_the_decoder_was(tiny_ckpt, tmp_path):
    old, new = load_model(tiny_ckpt), load_model(tiny_ckpt)
    new.read_more_lm_layers(2)
    assert new.cfg.decoder_lm_layers == 2 and new.decoder.inp.in_features == 2 * new.lm.hidden_size
    x = torch.rand(4, 3, 16, 16)
    ids = old.encode(x)
    assert torch.equal(new.encode(x), ids)  # the same words
    assert torch.allclose(new.decode(ids), old.decode(ids), atol=1e-6)  # and, at first, the same pictures
    path = tmp_path / "wider.safetensors"
    save_model(new, path)
    assert torch.equal(load_model(path).decode(ids), new.decode(ids))
    new.train()
    new.freeze_encoder()
    new(x)["loss"].backward()  # the newly read layer gets a gradient at once
    assert new.decoder.inp.weight.grad[:, :new.lm.hidden_size].abs().sum() > 0
    with pytest.raises(ValueError, match="not fewer"):
        new.read_more_lm_layers(1)
    with pytest.raises(ValueError, match="2 layers"):
        new.read_more_lm_layers(3)


def test_masking_replaces_exact_share(tiny_model):
    tiny_model.train()
    emb = torch.randn(5, 16, tiny_model.lm.hidden_size)
    out = tiny_model.apply_mask(emb)
    masked = (out == tiny_model.mask_embed).all(-1)
    assert (masked.sum(1) == 8).all()
    assert torch.equal(out[~masked], emb[~masked])


def test_save_load_identical(tiny_ckpt):
    a = load_model(tiny_ckpt)
    b = load_model(tiny_ckpt)
    x = torch.rand(4, 3, 16, 16)
    ids = a.encode(x)
    assert torch.equal(ids, b.encode(x))
    assert torch.equal(a.decode(ids), b.decode(ids))
    assert a.card["training"] == {"steps": 3}


def test_matching_codes_cache_is_used_and_a_bad_one_ignored(tiny_ckpt, tmp_path, monkeypatch):
    """A load computes the matching codes once per machine and reads them back after; a cache file that
    is truncated or holds no unit codes is not trusted: the codes (and so the words) stay the computed ones."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = load_model(tiny_ckpt).quantizer.match_codes.clone()
    files = list((tmp_path / "lqae").glob("codes-*.safetensors"))
    assert len(files) == 1
    from safetensors.torch import load_file, save_file

    assert torch.equal(load_file(str(files[0]))["codes"], fresh)
    save_file({"codes": torch.full_like(fresh, 0.5)}, str(files[0]))  # right shape, not unit vectors
    assert torch.equal(load_model(tiny_ckpt).quantizer.match_codes, fresh)
    assert torch.equal(load_file(str(files[0]))["codes"], fresh)  # and written again
    files[0].write_bytes(files[0].read_bytes()[:50])
    assert torch.equal(load_model(tiny_ckpt).quantizer.match_codes, fresh)
    cached = load_model(tiny_ckpt).quantizer  # from the rewritten file: the same numbers
    assert torch.equal(cached.match_codes, fresh)


def test_save_load_roundtrip_from_model(tiny_model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model, path)
    loaded = load_model(path)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(tiny_model.encode(x), loaded.encode(x))
    assert torch.equal(tiny_model.decode(tiny_model.encode(x)), loaded.decode(loaded.encode(x)))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        assert f.metadata()["format"] == "pt"
    assert not any("transformer" in k or "codebook" in k for k in keys)  # the LM's weights are not in it


def test_truncated_checkpoint_fails_clearly(tiny_ckpt, tmp_path):
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(tiny_ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(bad)


def test_non_safetensors_fails_clearly(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(bad)


def test_checkpoint_for_other_lm_fails_naming_both(tiny_ckpt, other_lm_dir, tmp_path):
    from lqae_cli.lm import LanguageModel

    other = LanguageModel.load(str(other_lm_dir))
    a = load_model(tiny_ckpt)
    with pytest.raises(CheckpointError) as err:
        load_model(tiny_ckpt, lm=other)
    msg = str(err.value)
    assert a.cfg.lm_fingerprint in msg and other.fingerprint in msg and "\n" not in msg


def test_missing_tensor_fails(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(tiny_ckpt), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(tiny_ckpt))
    tensors.pop(next(iter(tensors)))
    bad = tmp_path / "missing.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(bad)


@pytest.mark.parametrize("kw", [{}, {"refine_channels": 0}, {"decoder_lm_layers": 2, "heads": 4, "enc_width": 48},
                                {"image_size": 24, "patch_size": 6, "dec_depth": 3, "match_dim": 4}])
def test_state_size_counts_the_state_dict(tiny_lm, kw):
    """The count a checkpoint's header is checked against before any model is built."""
    from lqae_cli.model import state_size

    model = LQAE(tiny_config(tiny_lm, **kw), tiny_lm)
    assert state_size(model.cfg, tiny_lm.hidden_size) == sum(v.numel() for v in model.state_dict().values())


def test_strict_fp32_turns_tf32_off_inside_and_restores_the_settings():
    """fp32 encoding must not use CUDA's TF32 shortcuts (they move words): the block switches them off
    and puts back whatever the caller had."""
    from lqae_cli.precision import strict_fp32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with strict_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError), strict_fp32():
            raise RuntimeError("a failure inside still restores")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
