"""The metadata schema (service/metadata.py): every committed version follows it, and a bad key
is an error that names it, at load."""

from __future__ import annotations

import copy
import json

import pytest

from service import metadata
from service.registry import Registry
from tests.server import MODELS_DIR

VERSIONS = sorted(p for p in MODELS_DIR.glob("*/*") if (p / "saved_model.pb").exists())


@pytest.mark.parametrize("version", VERSIONS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_every_committed_version_follows_the_schema(version):
    md = metadata.read(version)
    assert md["format_version"] in metadata.FORMATS
    if md["format_version"] >= 2:  # calibration, the uncertain rule and layer inputs
        assert md["calibration"]["temperature"] > 0 and md["uncertainty"]["max_distance"] > 0
        assert all(row["inputs"] for row in md["layers"])


def _newest(name: str):
    return max((p for p in VERSIONS if p.parent.name == name), key=lambda p: int(p.name))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda m: m["preprocessing"].pop("scale"), "preprocessing.scale: Field required"),
        (lambda m: m["layers"][0].update(type="convolution"), "layers.0.type"),
        (lambda m: m.update(format_version=9), "format_version"),
        (lambda m: m["signatures"]["predict"].pop("output"), "signatures.predict.output"),
        (lambda m: m.update(unread_key=1), "unread_key: Extra inputs are not permitted"),
        (lambda m: m["preprocessing"].update(resize="stretch"), "preprocessing.resize"),
    ],
)
def test_a_bad_key_is_an_error_naming_it(change, named):
    md = copy.deepcopy(metadata.read(_newest("mnist")))
    change(md)
    with pytest.raises(metadata.MetadataError, match=named.replace(".", r"\.")):
        metadata.validate(md, "test")


def test_the_service_refuses_to_load_a_version_with_a_bad_key(tmp_path):
    import shutil

    source = _newest("mnist")
    target = tmp_path / "mnist" / source.name
    shutil.copytree(source, target)
    path = target / metadata.METADATA_PATH
    md = json.loads(path.read_text())
    del md["preprocessing"]["scale"]
    path.write_text(json.dumps(md))
    registry = Registry(tmp_path, engine_cache=tmp_path / "engines")
    with pytest.raises(metadata.MetadataError, match=r"preprocessing\.scale: Field required"):
        registry.load_all()
    assert "preprocessing.scale" in registry.error
