"""Bad Meta checkpoints fail in one line: pickles naming anything but tensors, mismatched params.json, missing shards, truncation."""

from __future__ import annotations

import base64
import collections
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures.meta_checkpoint import (
    Global, Reduce, Storage, Tensor, tensor_of, write_meta_checkpoint, write_pth, write_state_dict,
)
from fixtures.random_llama import TINY, random_weights
from lljx.models import ModelFileError, load_model
from lljx.models.torch_archive import Archive


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_meta_checkpoint(tmp_path_factory.mktemp("meta") / "good", random_weights(TINY), TINY, shards=2)


@pytest.fixture
def folder(tmp_path, good) -> Path:
    """A fresh copy of the good two-shard checkpoint to break."""
    return Path(shutil.copytree(good, tmp_path / "ckpt"))


def fails(folder: Path, *fragments: str) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


class Visitor:
    """An ordinary Python object: a pickle of it names this module's class."""


SUBPROCESS = Reduce(Global("subprocess", "run"), ["touch", "{marker}"])


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (Reduce(Global("os", "system"), "touch {marker}"), "os.system"),
        (Reduce(Global("posix", "system"), "touch {marker}"), "posix.system"),
        (Reduce(Global("builtins", "eval"), "open({marker!r}, 'w')"), "builtins.eval"),
        (Reduce(Global("torch", "load"), "{marker}"), "torch.load"),
        (Reduce(Global("collections", "OrderedDict"), [("x", SUBPROCESS)]), "subprocess.run"),
        (Visitor(), "test_models_meta_errors.Visitor"),
    ],
    ids=["os.system", "posix.system", "eval", "torch.load", "nested", "a-class"],
)
def test_a_pickle_naming_anything_but_tensors_is_refused_and_never_runs(folder, tmp_path, value, named):
    marker = tmp_path / "ran"
    root = collections.OrderedDict(x=_fill(value, marker))
    write_pth(folder / "consolidated.00.pth", root, storages=[])
    fails(folder, "consolidated.00.pth", named, "refused")
    assert not marker.exists()


def _fill(arg, marker: Path):
    if isinstance(arg, str):
        return arg.format(marker=str(marker))
    if isinstance(arg, list):
        return [_fill(a, marker) for a in arg]
    if isinstance(arg, tuple):
        return tuple(_fill(a, marker) for a in arg)
    if isinstance(arg, Reduce):
        return Reduce(arg.function, *(_fill(a, marker) for a in arg.args))
    return arg


def replace_pickle(path: Path, data: bytes) -> None:
    """Rewrite the archive with another data.pkl (any protocol), keeping every other record."""
    with zipfile.ZipFile(path) as old:
        records = {info.filename: old.read(info) for info in old.infolist()}
    with zipfile.ZipFile(path, "w") as new:
        for name, payload in records.items():
            new.writestr(name, data if name.endswith("/data.pkl") else payload)


def test_a_protocol_5_pickle_of_an_object_is_refused(folder):
    replace_pickle(folder / "consolidated.00.pth", pickle.dumps({"x": Visitor()}, protocol=5))
    fails(folder, "test_models_meta_errors.Visitor", "refused")


@pytest.mark.parametrize(
    ("root", "fragment"),
    [
        ({"x": 3}, "maps 'x' to a int, not to a tensor"),
        ({"x": {"nested": 1}}, "not to a tensor"),
        ([1, 2], "holds a list, not a dict of tensors"),
        ({"x": Tensor(Storage("0", np.zeros(4, np.float32)), 2, (4,), (1,))}, "reaches element 6 of a storage of 4"),
        ({"x": Tensor(Storage("0", np.zeros(4, np.float32)), 0, (2, 2), (1,))}, "do not fit"),
    ],
    ids=["int", "dict", "list", "past-the-storage", "bad-strides"],
)
def test_pickles_that_are_not_a_dict_of_tensors_are_refused(folder, root, fragment):
    write_pth(folder / "consolidated.00.pth", root)
    fails(folder, "consolidated.00.pth", fragment)


def test_a_storage_record_that_is_missing(folder):
    tensor = tensor_of(np.zeros(4, np.float32), "7")
    write_pth(folder / "consolidated.00.pth", {"x": tensor}, storages=[])
    fails(folder, "no record", "data/7")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"n_layers": 3}, "missing tensor 'layers.2.attention_norm.weight', which params.json implies"),
        ({"n_layers": 1}, "unexpected tensor 'layers.1."),
        ({"dim": 128, "n_heads": 8}, "'tok_embeddings.weight' is [512, 64] in 2 shard(s), params.json makes it [512, 1"),
        ({"n_kv_heads": 4}, "'layers.0.attention.wk.weight' is [32, 64]"),
        ({"vocab_size": 1024}, "params.json makes it [1024, 64] (is a shard missing?)"),
        ({"vocab_size": -1}, "Llama 2"),
        ({"quantization_args": {"scheme": "int4_weight_int8_dynamic_activation"}}, "quantized checkpoints"),
        ({"dim": "64"}, "'dim' should be an integer"),
        ({"use_scaled_rope": "yes"}, "'use_scaled_rope' should be true or false"),
    ],
    ids=["more-layers", "fewer-layers", "wider", "more-kv", "bigger-vocab", "llama2", "quantized", "string", "flag"],
)
def test_params_json_that_does_not_match_the_tensors(folder, change, fragment):
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, **change}))
    fails(folder, fragment)


def test_a_missing_first_shard(folder):
    (folder / "consolidated.00.pth").unlink()
    fails(folder, "consolidated.00.pth is missing (1 of 2 found)")


def test_a_missing_last_shard(folder):
    (folder / "consolidated.01.pth").unlink()
    fails(folder, "is a shard missing?")


def test_shards_of_different_checkpoints(folder, tmp_path):
    other = write_meta_checkpoint(tmp_path / "other", random_weights(TINY, seed=1), TINY, shards=2)
    shutil.copy(other / "consolidated.01.pth", folder / "consolidated.01.pth")
    # Same shapes everywhere: the norms, which every rank repeats, are what tells them apart.
    fails(folder, "consolidated.01.pth", "differs from shard 00's")


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.0])
def test_a_truncated_archive(folder, keep):
    path = folder / "consolidated.01.pth"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    fails(folder, "consolidated.01.pth", "not a readable zip archive")


def test_a_missing_tokenizer(folder):
    (folder / "tokenizer.model").unlink()
    fails(folder, "tokenizer.model", "missing")


def test_a_tokenizer_of_another_size(folder):
    ranks = [bytes([b]) for b in range(256)] + [b"ab"]
    lines = [f"{base64.b64encode(token).decode()} {rank}" for rank, token in enumerate(ranks)]
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    fails(folder, "vocab_size is 512, but tokenizer.model with Llama 3's 256 special tokens has 513")


def test_the_command_line_reports_a_refused_pickle_in_one_line(folder, tmp_path):
    marker = tmp_path / "ran"
    write_pth(folder / "consolidated.00.pth", {"x": Reduce(Global("os", "system"), f"touch {marker}")}, storages=[])
    run = subprocess.run(
        [sys.executable, "-m", "lljx.cli", "generate", "--model", str(folder), "hi"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "LLJX_COMPILE_CACHE": "0"},
    )  # fmt: skip
    assert run.returncode == 1 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lljx: error: ") and "os.system" in lines[0], run.stderr
    assert not marker.exists()


@pytest.mark.parametrize("dropped", ["tok_embeddings.weight", "norm.weight", "layers.1.feed_forward.w2.weight"])
def test_a_checkpoint_without_a_tensor_it_needs(tmp_path, dropped):
    folder = write_meta_checkpoint(tmp_path / "one", random_weights(TINY), TINY)
    archive = Archive(folder / "consolidated.00.pth")
    kept = {name: np.array(archive.read(ref)) for name, ref in archive.tensors.items() if name != dropped}
    del archive
    write_state_dict(folder / "consolidated.00.pth", kept)
    fails(folder, f"missing tensor {dropped!r}")


def test_a_compressed_record_is_refused(folder):
    path = folder / "consolidated.00.pth"
    with zipfile.ZipFile(path) as old:
        records = [(info.filename, old.read(info)) for info in old.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as new:
        for name, payload in records:
            new.writestr(name, payload)
    fails(folder, "consolidated.00.pth", "is compressed")
