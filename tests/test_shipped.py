"""The pretrained tiny backbone shipped with the package: what it is, that an empty cache takes it at once, and
that `testbed pretrain` rebuilds it and says how its own result compares."""

import json

import pytest
import torch

import testbed.model.pretrain as pretraining
import testbed.model.shipped as shipped
from testbed.cli import main
from testbed.data.synth import FORMAT_VERSION, corpus_cache_path
from testbed.model.architecture import model_class
from testbed.model.backbone import build_backbone
from testbed.model.pretrain import pretrained_tiny
from testbed.model.settings import backbone_entry
from testbed.model.settings import PretrainSettings
from testbed.model.state import state_digest

DEFAULT = PretrainSettings()
SMALL = PretrainSettings(steps=6, batch_size=2)  # what `testbed pretrain --steps 6 --batch-size 2` makes
WAVEFORMS = torch.randn(8, 16000, generator=torch.Generator().manual_seed(5))


def test_the_shipped_backbone_is_the_default_settings_on_the_current_corpus():
    """Any change to the corpus or to the default pretraining settings renames the cache entry: this fails until
    the backbone is shipped again (tools/ship_backbone.py)."""
    entry = shipped.shipped_entry(backbone_entry(DEFAULT).name)
    assert entry is not None, f"no shipped backbone for {backbone_entry(DEFAULT).name}: run tools/ship_backbone.py"
    record = shipped.shipped_record(entry)
    assert record["corpus"]["entry"] == corpus_cache_path(DEFAULT.corpus_seed).name
    assert record["corpus"]["format_version"] == FORMAT_VERSION
    assert record["settings"]["steps"] == DEFAULT.steps
    assert state_digest(model_class(DEFAULT.family).from_pretrained(entry).state_dict()) == record["digest"]
    assert sum(file.stat().st_size for file in entry.iterdir()) < 40 * 2**20
    assert min(record["keyword_probe"].values()) > 0.5  # chance is 1/12


def test_an_empty_cache_takes_the_shipped_backbone_without_pretraining(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("pretrained although a backbone ships for these settings")

    monkeypatch.setattr(pretraining, "pretrain", refuse)
    backbone = build_backbone("tiny")
    entry = backbone_entry(DEFAULT)
    assert shipped.installed_from_package(entry)
    assert state_digest(backbone.state_dict()) == shipped.shipped_record(entry)["digest"]
    assert not list(entry.parent.glob("*.shipped-*"))  # no partial copy left


@pytest.fixture
def small_shipped(tmp_path, monkeypatch):
    """A private cache and package: SMALL pretrained on WAVEFORMS, shipped, and the cache emptied again."""
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretraining, "corpus_waveforms", lambda seed, **params: WAVEFORMS)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "package")
    backbone, entry = pretrained_tiny(SMALL, progress=False)
    digest = state_digest(backbone.state_dict())
    shipped.ship(entry, {"digest": digest, "torch": torch.__version__, "host": "here",
                         "keyword_probe": {str(layer): 0.5 for layer in (2, 4, 6, 8)},
                         "pretraining": {"final_loss": 1.5}})
    pretraining.shutil.rmtree(entry)
    return entry, digest


def test_testbed_pretrain_rebuilds_the_shipped_backbone_and_finds_it_identical(small_shipped, capsys):
    entry, digest = small_shipped
    pretrained_tiny(SMALL, progress=False)  # what a run does first: the shipped one is installed
    assert shipped.installed_from_package(entry)
    assert main(["pretrain", "--steps", "6", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert not shipped.installed_from_package(entry)  # pretrained here now
    assert f"identical to the backbone shipped with testbed (digest {digest})" in printed
    assert main(["pretrain", "--steps", "6", "--batch-size", "2"]) == 0  # pretrained here: shown, not rebuilt
    assert "pretraining:" in capsys.readouterr().out


def test_testbed_pretrain_says_how_far_a_different_result_lies_from_the_shipped_one(small_shipped, capsys,
                                                                                   monkeypatch):
    entry, _ = small_shipped
    record_file = shipped.SHIPPED_DIR / entry.name / shipped.SHIPPED_RECORD
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({**record, "digest": "0" * 16}))  # as if shipped from another host
    # the probe itself needs the built-in corpus (a minute): its figures here are the point of this test
    monkeypatch.setattr(shipped, "keyword_probe", lambda backbone, settings: {2: 0.6, 4: 0.4, 6: 0.5, 8: 0.5})
    assert main(["pretrain", "--steps", "6", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "differs from the backbone shipped with testbed (digest 0000000000000000" in printed
    assert "shipped; keyword probe" in printed and ", 1.5 shipped" in printed
    assert "L2: 60.0% here, 50.0% shipped (+10.0 points)" in printed
    assert "L4: 40.0% here, 50.0% shipped (-10.0 points)" in printed
