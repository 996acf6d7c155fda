"""The early-exit model: depth-limited forward, exit heads and losses, per-layer state, pretraining parts."""

import pytest
import torch

from testbed.model.architecture import build_random
from testbed.model.backbone import build_backbone
from testbed.model.early_exit import EarlyExitModel, default_exits, exit_loss
from testbed.model.pretrain import learning_rate, pretrain, span_mask
from testbed.model.settings import PretrainSettings
from testbed.model.state import group_of, load_partial_state, partial_state, state_bytes
from testbed.model.targets import MEL_BANDS, SpectrumTargets, kmeans, mfcc_frames

TASKS = {"keyword": 5, "speaker": 7}


@pytest.fixture(scope="module")
def debug_model():
    return EarlyExitModel(build_random("debug", seed=1), TASKS)


@pytest.mark.parametrize("layers, exits", [(12, (3, 6, 9, 12)), (8, (2, 4, 6, 8)), (2, (1, 2)), (1, (1,))])
def test_default_exits_are_evenly_spaced(layers, exits):
    assert default_exits(layers) == exits


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_full_depth_matches_the_transformers_forward(family):
    backbone = build_random("debug", family, seed=3)
    model = EarlyExitModel(backbone, TASKS).eval()
    waveforms = torch.randn(2, 16000)
    normalised = (waveforms - waveforms.mean(-1, keepdim=True)) / (waveforms.std(-1, keepdim=True) + 1e-5)  # by hand
    with torch.no_grad():
        expected = backbone(normalised).last_hidden_state
        *_, (layer, ours) = model.hidden_states(waveforms, model.num_layers)
    assert layer == model.num_layers
    torch.testing.assert_close(ours, expected)


def test_forward_to_depth_never_runs_deeper_layers():
    model = EarlyExitModel(build_random("tiny", seed=0), {"keyword": 4})
    calls = []
    for index, layer in enumerate(model.backbone.encoder.layers):
        layer.register_forward_hook(lambda module, args, output, index=index: calls.append(index + 1))
    logits = model(torch.randn(2, 16000), depth=4, task="keyword")
    assert calls == [1, 2, 3, 4]
    assert [out.shape for out in logits] == [torch.Size([2, 4])] * 2  # exits 2 and 4


def test_training_to_depth_leaves_deeper_layers_and_frozen_cnn_without_gradient(debug_model):
    debug_model.zero_grad(set_to_none=True)
    logits = debug_model(torch.randn(3, 16000), depth=1, task="keyword")
    exit_loss(logits, torch.tensor([0, 1, 2])).backward()
    grads = {name: p.grad is not None for name, p in debug_model.named_parameters()}
    assert any(v for k, v in grads.items() if k.startswith("backbone.encoder.layers.0."))
    assert not any(v for k, v in grads.items() if k.startswith("backbone.encoder.layers.1."))
    assert not any(v for k, v in grads.items() if k.startswith("backbone.feature_extractor."))
    assert not any(v for k, v in grads.items() if k.startswith("heads.speaker_") or k.startswith("heads.keyword_2"))


def test_depth_outside_the_backbone_is_refused(debug_model):
    with pytest.raises(ValueError, match="depth 3 outside 1..2"):
        debug_model(torch.randn(1, 16000), depth=3, task="keyword")
    with pytest.raises(ValueError, match="strictly increasing"):
        EarlyExitModel(build_random("debug"), TASKS, exits=(2, 1))


@pytest.mark.parametrize("mode", ["all_exits", "deepest", "self_distill"])
def test_exit_losses(mode):
    logits = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 0])
    ce = [torch.nn.functional.cross_entropy(out, labels) for out in logits]
    loss = exit_loss(logits, labels, mode)
    if mode == "deepest":
        torch.testing.assert_close(loss, ce[-1])
    elif mode == "all_exits":
        torch.testing.assert_close(loss, sum(ce))
    else:
        assert loss > sum(ce)  # distillation terms are non-negative and almost surely positive here
    loss.backward()
    with pytest.raises(ValueError, match="allowed: all_exits, deepest, self_distill"):
        exit_loss(logits, labels, "median")


def test_partial_state_holds_only_layers_and_heads_up_to_depth():
    model = EarlyExitModel(build_random("tiny", seed=0), TASKS)
    sizes = []
    for depth in model.exits:
        state = partial_state(model, depth, tasks={"keyword"})
        groups = {group_of(key) for key in state}
        assert max(g.depth for g in groups) == depth
        assert {g.kind for g in groups} == {"embed", "layer", "head"}  # frozen CNN never travels
        assert {g.task for g in groups if g.kind == "head"} == {"keyword"}
        sizes.append(state_bytes(state))
    assert sizes == sorted(sizes) and sizes[-1] > 3 * sizes[0]


def test_partial_state_round_trips_and_rejects_unknown_keys(debug_model):
    other = EarlyExitModel(build_random("debug", seed=9), TASKS)
    state = {k: v.clone() for k, v in partial_state(debug_model, 1).items()}
    load_partial_state(other, state)
    for key, value in partial_state(other, 1).items():
        torch.testing.assert_close(value, state[key])
    with pytest.raises(KeyError, match="unknown state key"):
        load_partial_state(other, {"backbone.nothing": torch.zeros(1)})
    key = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        load_partial_state(other, {key: torch.zeros(123)})


def test_group_of_unknown_key():
    with pytest.raises(KeyError):
        group_of("optimizer.state")


def test_mfcc_targets_align_with_backbone_frames(debug_model):
    waveforms = torch.randn(2, 16000)
    frames = mfcc_frames(waveforms)
    *_, (_, hidden) = debug_model.hidden_states(waveforms, 1)
    assert frames.shape == (2, hidden.shape[1], 39)


def test_spectrum_targets_align_with_backbone_frames_and_keep_each_voice_level(debug_model):
    """Standardised per band over the corpus, not per clip: a clip louder in some bands stays louder there."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 16000, generator=generator)
    hum = torch.sin(torch.arange(16000) * 2 * torch.pi * 150 / 16000)  # a 150 Hz voice-like tone
    corpus = torch.cat([noise, noise[:2] + 3 * hum])
    targets = SpectrumTargets.fit(corpus)
    spectra = targets(corpus)
    *_, (_, hidden) = debug_model.hidden_states(corpus[:1], 1)
    assert spectra.shape == (6, hidden.shape[1], MEL_BANDS)
    flat = spectra.flatten(0, 1)
    torch.testing.assert_close(flat.mean(0), torch.zeros(MEL_BANDS), atol=1e-4, rtol=0)
    low_band = spectra[..., 3].mean(1)  # the band that holds 150 Hz
    assert (low_band[4:].min() > low_band[:4].max()).item()


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2, generator=generator) for c in centres])
    found = kmeans(points, 3, seed=0)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.5


def test_span_mask_covers_spans_of_the_given_length():
    mask = span_mask(4, 49, prob=0.8, length=5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 49)
    assert ((mask.sum(1) >= 5) & (mask.sum(1) <= 40)).all()


def test_learning_rate_warms_up_then_decays():
    settings = PretrainSettings(steps=100, learning_rate=1e-3, warmup=0.1)
    rates = [learning_rate(step, settings) for step in range(100)]
    assert rates[9] == pytest.approx(1e-3) and rates[0] < rates[5] < rates[9] > rates[50] > rates[99]


def test_pretraining_runs_and_reports_its_figures():
    waveforms = torch.randn(8, 16000)
    backbone, metrics = pretrain(waveforms, PretrainSettings(steps=2, batch_size=2, clusters=4), progress=False)
    assert backbone.config.num_hidden_layers == 8
    assert set(metrics) >= {"seconds", "first_loss", "final_loss", "final_masked_accuracy"}


def test_the_spectrum_loss_is_part_of_the_objective_and_of_the_cache_key():
    waveforms = torch.randn(8, 16000, generator=torch.Generator().manual_seed(2))
    losses = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        _, metrics = pretrain(waveforms, PretrainSettings(steps=1, batch_size=2, clusters=4, spectrum_weight=weight),
                              progress=False)
        losses[weight] = metrics["first_loss"]
    assert losses[1.0] > losses[0.0]  # the same first step plus a positive reconstruction error
    assert PretrainSettings(spectrum_weight=0.0).key() != PretrainSettings().key()
    # without it, the key of the clusters-only pretraining is the one it had before the field existed
    assert PretrainSettings(spectrum_weight=0.0).key() == "tiny-wav2vec2-71b350987441"


def test_pretraining_on_another_vocabulary_is_cached_beside_the_default(tmp_path, monkeypatch):
    from testbed.cli import main
    from testbed.model.pretrain import pretrain_record, pretrained_tiny
    from testbed.data.synth import corpus_cache_path

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    settings = PretrainSettings(steps=1, batch_size=2, clusters=4, words=("yes", "no"))
    assert settings.key() != PretrainSettings(steps=1, batch_size=2, clusters=4).key()
    _, path = pretrained_tiny(settings, progress=False)
    assert path.name.endswith(corpus_cache_path(0, words=("yes", "no")).name)
    assert pretrain_record(path)["settings"]["words"] == ["yes", "no"]
    assert pretrain_record(path)["clips"] == 76 * 2 * 3  # training speakers x words x takes
    assert main(["pretrain", "--words", "yes,No!", "--steps", "1"]) == 2  # one line naming the bad words


def test_debug_backbone_is_deterministic_and_random_tiny_needs_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    a, b = build_backbone("debug", seed=4), build_backbone("debug", seed=4)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, msg=name)
    tiny = build_backbone("tiny", pretrained=False)
    assert 5e6 < sum(p.numel() for p in tiny.parameters()) < 15e6
    assert not any(tmp_path.iterdir())


def test_only_a_backbone_not_yet_made_is_built_before_the_processes_start(tmp_path, monkeypatch):
    from testbed.model.backbone import buildable_anywhere
    from testbed.model.pretrain import pretrained_tiny
    from testbed.model.settings import backbone_entry

    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    assert buildable_anywhere("debug") and buildable_anywhere("tiny", "hubert", pretrained=False)  # from the seed
    assert not buildable_anywhere("tiny")  # first use: copied from the package (or pretrained) once, by the launcher
    assert not buildable_anywhere(str(tmp_path))  # a checkpoint: loaded once, so that a bad one is one clear error
    _, entry = pretrained_tiny(progress=False)
    assert entry == backbone_entry(PretrainSettings()) and buildable_anywhere("tiny")
    assert not buildable_anywhere("tiny", "wavlm")  # another family is another cache entry


def test_optimizer_gives_heads_their_own_rate_and_skips_the_frozen_cnn(debug_model):
    from testbed.model.train import make_optimizer

    optimizer = make_optimizer(debug_model, 1e-4, 1e-3)
    body, heads = optimizer.param_groups
    assert (body["lr"], heads["lr"]) == (1e-4, 1e-3)
    head_ids = {id(p) for n, p in debug_model.named_parameters() if n.startswith("heads.")}
    assert {id(p) for p in heads["params"]} == head_ids
    frozen = {id(p) for n, p in debug_model.named_parameters() if n.startswith("backbone.feature_extractor.")}
    assert not frozen & {id(p) for p in body["params"]}


def test_cost_probe_measures_the_end_exits_and_puts_the_others_on_their_line():
    from testbed.client.costs import measure_costs

    model = EarlyExitModel(build_random("tiny", seed=2), {"keyword": 5}, exits=(2, 4, 6, 8))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    waveforms, labels = torch.randn(6, 16000), torch.randint(0, 5, (6,))
    costs = measure_costs(model, waveforms, labels, task="keyword", batch_size=8, loss_mode="all_exits")
    assert sorted(costs) == [2, 4, 6, 8]
    low, high = costs[2], costs[8]
    for depth in (4, 6):  # affine in depth between the two measured exits
        share = (depth - 2) / 6
        assert costs[depth].step_cpu_s == pytest.approx(low.step_cpu_s + share * (high.step_cpu_s - low.step_cpu_s))
        assert costs[depth].peak_mb == pytest.approx(low.peak_mb + share * (high.peak_mb - low.peak_mb))
    assert all(c.step_cpu_s > 0 and c.peak_mb > 0 for c in costs.values())
    assert [costs[d].state_bytes for d in (2, 4, 6, 8)] == [
        state_bytes(partial_state(model, d, {"keyword"})) for d in (2, 4, 6, 8)]
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # restored
