"""Interrupted pretraining continues from its saved progress along exactly the same trajectory."""

import signal

import pytest
import torch

import testbed.model.pretrain as pretraining
from testbed.cli import main
from testbed.model.pretrain import PretrainingInterrupted, pretrain, pretrained_tiny, progress_file
from testbed.model.settings import PretrainSettings
from testbed.model.state import state_digest

# a few seconds per run: 6 steps of 2 random clips, 4 clusters; the model keeps its dropout
SETTINGS = PretrainSettings(steps=6, batch_size=2, clusters=4)
WAVEFORMS = torch.randn(8, 16000, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def uninterrupted():
    """Digest, per-step losses and metrics of a run that is never interrupted nor saved."""
    losses: list[float] = []
    backbone, metrics = pretrain(WAVEFORMS, SETTINGS, progress=False,
                                 after_step=lambda step, loss: losses.append(loss))
    return state_digest(backbone.state_dict()), losses, _comparable(metrics)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache whose built-in corpus is WAVEFORMS (nothing synthesised); saves every 2 steps."""
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    monkeypatch.setattr(pretraining, "corpus_waveforms", lambda seed, **params: WAVEFORMS)
    monkeypatch.setattr(pretraining, "SAVE_EVERY_STEPS", 2)
    return tmp_path


def _comparable(metrics: dict) -> dict:
    return {name: value for name, value in metrics.items() if name not in ("seconds", "settings")}  # wall time differs


def _ctrl_c_at(stop_step: int, losses: list[float]):
    """after_step: record the loss, and press Ctrl-C (a real SIGINT) once `stop_step` steps are done."""
    def after_step(step: int, loss: float) -> None:
        losses.append(loss)
        if step == stop_step:
            signal.raise_signal(signal.SIGINT)
    return after_step


def _progress_path(settings: PretrainSettings = SETTINGS):
    from testbed.data.synth import corpus_cache_path
    from testbed.paths import cache_dir

    return progress_file(cache_dir() / "backbones" / f"{settings.key()}-corpus-{corpus_cache_path(0).name}")


def _finish(capsys, losses: list[float]):
    """Pretrain to the end through the cache; returns (digest, metrics, printed output)."""
    backbone, path = pretrained_tiny(SETTINGS, progress=False, after_step=lambda step, loss: losses.append(loss))
    return state_digest(backbone.state_dict()), _comparable(pretraining.pretrain_record(path)), capsys.readouterr()


def test_ctrl_c_then_continuing_gives_the_uninterrupted_result(cache, capsys, uninterrupted):
    digest, losses, metrics = uninterrupted
    seen: list[float] = []
    with pytest.raises(PretrainingInterrupted, match="interrupted at step 3 of 6; progress saved, run the same"):
        pretrained_tiny(SETTINGS, progress=False, after_step=_ctrl_c_at(3, seen))
    assert _progress_path().exists() and len(seen) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C interrupts at once again
    continued_digest, continued_metrics, printed = _finish(capsys, seen)
    assert "continuing pretraining from step 3 of 6 (saved " in printed.out
    assert (continued_digest, seen, continued_metrics) == (digest, losses, metrics)


def test_progress_file_is_gone_once_the_backbone_is_written(cache, capsys, uninterrupted):
    with pytest.raises(PretrainingInterrupted):
        pretrained_tiny(SETTINGS, progress=False, after_step=_ctrl_c_at(4, []))
    assert _progress_path().exists()
    _finish(capsys, [])
    assert not _progress_path().exists()
    assert [path.name for path in _progress_path().parent.iterdir()] == [_progress_path().name[:-len(".progress.pt")]]


def test_interruption_inside_a_step_keeps_the_last_save(cache, capsys, monkeypatch, uninterrupted):
    """A step cut midway (a second Ctrl-C) leaves its state half updated: the save of step 2 stands."""
    real_step = pretraining._train_step

    def cut_in_step_4(run, waveforms, settings, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(run, waveforms, settings, step)

    monkeypatch.setattr(pretraining, "_train_step", cut_in_step_4)
    with pytest.raises(PretrainingInterrupted, match="during step 4 of 6; progress of step 2 saved"):
        pretrained_tiny(SETTINGS, progress=False)
    monkeypatch.setattr(pretraining, "_train_step", real_step)
    continued_digest, continued_metrics, printed = _finish(capsys, [])
    assert "continuing pretraining from step 2 of 6" in printed.out
    assert (continued_digest, continued_metrics) == (uninterrupted[0], uninterrupted[2])


@pytest.mark.parametrize("damage", ["truncated", "another key"])
def test_unusable_progress_is_reported_and_ignored(cache, capsys, uninterrupted, damage):
    with pytest.raises(PretrainingInterrupted):
        pretrained_tiny(SETTINGS, progress=False, after_step=_ctrl_c_at(3, []))
    path = _progress_path()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # the progress of other settings, put where this run's progress goes
        other = PretrainSettings(steps=6, batch_size=2, clusters=4, seed=1)
        with pytest.raises(PretrainingInterrupted):
            pretrained_tiny(other, progress=False, after_step=_ctrl_c_at(3, []))
        _progress_path(other).replace(path)
    capsys.readouterr()
    digest, metrics, printed = _finish(capsys, [])
    reason = "unreadable (" if damage == "truncated" else f"saved for {other.key()}"
    assert printed.err.count("\n") == 1 and f"ignoring pretraining progress {path}: {reason}" in printed.err
    assert printed.err.rstrip().endswith("starting from step 0") and "continuing" not in printed.out
    assert (digest, metrics) == (uninterrupted[0], uninterrupted[2])


def test_cli_exits_130_on_ctrl_c_then_continues_and_prints_the_digest(cache, capsys, monkeypatch, uninterrupted):
    arguments = ["pretrain", "--steps", "6", "--batch-size", "2"]
    interrupting = lambda *args, **kwargs: real(*args, after_step=_ctrl_c_at(2, []), **kwargs)  # noqa: E731
    real = pretraining.pretrained_tiny
    monkeypatch.setattr(pretraining, "pretrained_tiny", interrupting)
    assert main(arguments) == 130
    assert capsys.readouterr().err == ("testbed pretrain: pretraining interrupted at step 2 of 6; progress saved, "
                                       "run the same command again to continue\n")
    monkeypatch.setattr(pretraining, "pretrained_tiny", real)
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "continuing pretraining from step 2 of 6" in printed
    backbone, _ = real(PretrainSettings(steps=6, batch_size=2), progress=False)
    assert f"backbone digest {state_digest(backbone.state_dict())} (SHA-256 of its parameters)" in printed
