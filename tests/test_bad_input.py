"""Bad input through the real CLI: one clear message, non-zero exit, no traceback."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from report_outputs import cnn_output, invoke

from tests.conftest import FAST, run_cli


def _expect_error(proc, *words, code=1):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "error:" in proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


@pytest.mark.parametrize(
    "nm, words",
    [
        ("4:2", ["1 <= N < M"]),
        ("0:4", ["1 <= N < M"]),
        ("4:4", ["1 <= N < M"]),
        ("5:4", ["1 <= N < M"]),
        ("-1:4", ["1 <= N < M"]),
        ("a:b", ["cannot read --nm"]),
        ("2:4:1", ["cannot read --nm"]),
        ("", ["cannot read --nm"]),
    ],
)
def test_invalid_nm(nm, words, tmp_path):
    _expect_error(
        run_cli("convert", "digits_cnn", "--nm", nm, "--out", str(tmp_path / "o")), *words
    )


def test_bad_checkpoints(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04not a real checkpoint" * 10)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    cases = [
        (["missing.pt", "--arch", "x:y"], ["checkpoint not found: missing.pt"]),
        ([str(empty), "--arch", "x:y"], ["is empty"]),
        ([str(corrupt), "--arch", "x:y"], ["corrupt or not a checkpoint"]),
        ([str(text), "--arch", "x:y"], ["corrupt or not a checkpoint"]),
        ([str(tmp_path), "--arch", "x:y"], ["is a folder"]),
    ]
    for args, words in cases:
        _expect_error(run_cli("convert", *args, "--out", str(tmp_path / "o")), *words)


def test_bad_arch_and_shapes(unseen_model, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3, 3)}, other)
    base = ["--input-shape", "1,1,8,8", "--out", str(tmp_path / "o")]
    cases = [
        (["net.pt", "--arch", "nosuchmodule:Net", *base], ["cannot import module 'nosuchmodule'"]),
        (["net.pt", "--arch", "mymodels:Nope", *base], ["has no attribute 'Nope'"]),
        (["net.pt", "--arch", "mymodels", *base], ["cannot read --arch"]),
        (["net.pt", *base], ["no architecture was given"]),
        ([str(other), "--arch", "mymodels:Net", *base], ["does not match the model", "missing"]),
        (
            [
                "net.pt",
                "--arch",
                "mymodels:Net",
                "--input-shape",
                "1,3,32,32",
                "--out",
                str(tmp_path / "o"),
            ],
            ["--input-shape 1,3,32,32 does not fit the model"],
        ),
        (
            [
                "net.pt",
                "--arch",
                "mymodels:Net",
                "--input-shape",
                "1,a",
                "--out",
                str(tmp_path / "o"),
            ],
            ["cannot read --input-shape"],
        ),
        (["net.pt", "--arch", "mymodels:Net", "--out", str(tmp_path / "o")], ["no --input-shape"]),
    ]
    for args, words in cases:
        _expect_error(run_cli("convert", *args, cwd=unseen_model), *words)


def test_bad_data(unseen_model, tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "shape.npz": dict(x=rng.random((10, 3, 8, 8)), y=np.zeros(10, int)),
        "nan.npz": dict(x=np.full((10, 1, 8, 8), np.nan), y=np.zeros(10, int)),
        "empty.npz": dict(x=np.zeros((0, 1, 8, 8)), y=np.zeros(0, int)),
        "dtype.npz": dict(x=np.array([["a"] * 64] * 2).reshape(2, 1, 8, 8), y=np.zeros(2, int)),
        "labels.npz": dict(x=rng.random((10, 1, 8, 8)), y=rng.random(10)),
        "nox.npz": dict(inputs=rng.random((10, 1, 8, 8))),
    }
    words = {
        "shape.npz": "does not fit the model's input",
        "nan.npz": "NaN or Inf",
        "empty.npz": "has no rows",
        "dtype.npz": "dtype",
        "labels.npz": "not a label vector",
        "nox.npz": "has no array 'x'",
    }
    for name, arrays in files.items():
        np.savez(tmp_path / name, **arrays)
        proc = run_cli(
            "convert",
            "net.pt",
            "--arch",
            "mymodels:Net",
            "--input-shape",
            "1,1,8,8",
            "--data",
            str(tmp_path / name),
            "--out",
            str(tmp_path / "o"),
            *FAST,
            cwd=unseen_model,
        )
        _expect_error(proc, words[name])
    assert not (tmp_path / "o").exists()


def test_existing_output_folder_is_refused_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _expect_error(
        run_cli("convert", "digits_cnn", "--out", str(out), *FAST), "already exists", "--force"
    )
    assert (out / "keep.txt").read_text() == "mine"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _expect_error(
        run_cli("convert", "digits_cnn", "--out", str(blocker / "sub"), *FAST),
        "cannot write the output folder",
    )


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": _Exploit(marker)}, fh, protocol=2)
    torch.save({"model": _Exploit(marker)}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        proc = run_cli("convert", str(path), "--arch", "x:y", "--out", str(tmp_path / "o"))
        _expect_error(proc, "pickled Python objects", "--trust-checkpoint")
    with open(tmp_path / "evil4.pt", "wb") as fh:  # protocol 4: refused as not a checkpoint
        pickle.dump({"state_dict": _Exploit(marker)}, fh, protocol=4)
    proc = run_cli("convert", str(tmp_path / "evil4.pt"), "--arch", "x:y", "--out", "o")
    _expect_error(proc, "corrupt or not a checkpoint")
    assert not marker.exists()


def test_trusted_whole_module_loads_with_a_warning(unseen_model, tmp_path):
    import sys

    sys.path.insert(0, str(unseen_model))
    try:
        import mymodels

        model = mymodels.Net()
        model.load_state_dict(torch.load(unseen_model / "net.pt", weights_only=True))
        torch.save(model, unseen_model / "whole.pt")
    finally:
        sys.path.remove(str(unseen_model))
    args = ["convert", "whole.pt", "--input-shape", "1,1,8,8", *FAST]
    _expect_error(
        run_cli(*args, "--out", str(tmp_path / "a"), cwd=unseen_model), "--trust-checkpoint"
    )
    proc = run_cli(*args, "--out", str(tmp_path / "b"), "--trust-checkpoint", cwd=unseen_model)
    assert proc.returncode == 0, proc.stderr
    assert "runs code from the file" in proc.stderr


# --- The matrix of issue 15: every class of bad input is exit 1 with one line (never exit 3) ---
# In-process (Typer's CliRunner) where the case is refused before a model is built, so each
# case takes milliseconds; the cases that need a process of their own are in test_reliability.


def _refused(result, *words):
    """Exit 1, one ``error:`` line naming ``words``, no traceback, no escaped exception."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert "error:" in result.output
    for word in words:
        assert word in result.output, (word, result.output)


def _sample_state() -> dict:
    from sparsify_cli.samples import SAMPLES

    ckpt = torch.load(SAMPLES["digits_cnn"].checkpoint, weights_only=True)
    return {"sparsify_sample": "digits_cnn", "state_dict": dict(ckpt["state_dict"])}


def _npz_with_header(path, shape):
    """An .npz whose member header claims ``shape`` but stores 100 bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", buf.getvalue() + b"\0" * 100)


def _bad_files(tmp: Path) -> dict[str, list[str]]:
    """Write the hostile and broken inputs; return the convert arguments of each case."""
    import zipfile

    state = _sample_state()
    state["state_dict"]["stem.0.weight"] = torch.full_like(
        state["state_dict"]["stem.0.weight"], float("nan")
    )
    torch.save(state, tmp / "nan.pt")
    ints = _sample_state()
    ints["state_dict"] = {
        k: v.to(torch.int64) if v.is_floating_point() else v for k, v in ints["state_dict"].items()
    }
    torch.save(ints, tmp / "int64.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp / "zero_d.npz", x=np.float32(1), y=np.zeros(1, int))
    np.savez(tmp / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with zipfile.ZipFile(tmp / "text_member.npz", "w") as archive:
        archive.writestr("x", b"not an array")
    _npz_with_header(tmp / "tib.npz", (2**40, 1, 8, 8))
    np.savez(tmp / "labels_range.npz", x=rng.random((20, 1, 8, 8)), y=np.full(20, 25))
    np.savez(tmp / "one_sample.npz", x=rng.random((1, 1, 8, 8)), y=np.zeros(1, int))
    return {
        "nan weights": [str(tmp / "nan.pt")],
        "int64 weights": [str(tmp / "int64.pt")],
        "npz 0-d x": ["digits_cnn", "--data", str(tmp / "zero_d.npz")],
        "npz object member": ["digits_cnn", "--data", str(tmp / "objects.npz")],
        "npz member not an array": ["digits_cnn", "--data", str(tmp / "text_member.npz")],
        "npz header claims TiB": ["digits_cnn", "--data", str(tmp / "tib.npz")],
        "labels out of range": [
            "digits_cnn",
            "--method",
            "asp",
            "--data",
            str(tmp / "labels_range.npz"),
        ],
        "1-sample data, trained": [
            "digits_cnn",
            "--method",
            "asp",
            "--data",
            str(tmp / "one_sample.npz"),
        ],
        "--lr nan": ["digits_cnn", "--lr", "nan"],
        "--lr -1": ["digits_cnn", "--lr", "-1"],
        "--seed overflow": ["digits_cnn", "--seed", str(2**70)],
        "--seed negative": ["digits_cnn", "--seed", "-1"],
        "--input-shape too large": ["digits_cnn", "--input-shape", "1,1,100000,100000"],
        "--batch-sizes too large": ["digits_cnn", "--batch-sizes", f"1,{10**12}"],
        "--input too large": ["digits_cnn", "--input", "x:1x99999999999:float32"],
        "--bench-seconds 0": ["digits_cnn", "--bench-seconds", "0"],
        "--bench-seconds -1": ["digits_cnn", "--bench-seconds", "-1"],
        "--bench-seconds nan": ["digits_cnn", "--bench-seconds", "nan"],
        "--bench-seconds inf": ["digits_cnn", "--bench-seconds", "inf"],
    }


CONVERT_WORDS = {
    "nan weights": ["NaN or Inf", "stem.0.weight"],
    "int64 weights": ["integer tensors for float parameters"],
    "npz 0-d x": ["has no rows"],
    "npz object member": ["holds Python objects"],
    "npz member not an array": ["is not an array"],
    "npz header claims TiB": ["header is corrupt"],
    "labels out of range": ["do not fit the model's outputs", "class id 25"],
    "1-sample data, trained": ["no samples to train on"],
    "--lr nan": ["--lr must be a positive finite number"],
    "--lr -1": ["--lr must be a positive finite number"],
    "--seed overflow": ["--seed is out of range"],
    "--seed negative": ["--seed is out of range"],
    "--input-shape too large": ["--input-shape is too large to allocate"],
    "--batch-sizes too large": ["too large to allocate"],
    "--input too large": ["too large to allocate"],
    "--bench-seconds 0": ["--bench-seconds) must be a positive finite number"],
    "--bench-seconds -1": ["--bench-seconds) must be a positive finite number"],
    "--bench-seconds nan": ["--bench-seconds) must be a positive finite number"],
    "--bench-seconds inf": ["--bench-seconds) must be a positive finite number"],
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    return tmp, _bad_files(tmp)


@pytest.mark.parametrize("case", sorted(CONVERT_WORDS))
def test_convert_bad_input_matrix(case, bad_files):
    tmp, cases = bad_files
    out = tmp / f"out-{abs(hash(case))}"
    result = invoke("convert", *FAST, *cases[case], "--out", str(out))
    _refused(result, *CONVERT_WORDS[case])
    assert not out.exists() and not list(tmp.glob(f".{out.name}*"))  # no staging, no .work


@pytest.mark.parametrize(
    "value", ["0", "-1", "nan", "inf"], ids=lambda v: f"bench --bench-seconds {v}"
)
def test_bench_seconds_must_be_positive_and_finite(value):
    _refused(invoke("bench", str(cnn_output()), "--bench-seconds", value), "--bench-seconds")


def _recipe(tmp: Path, **options) -> Path:
    recipe = yaml.safe_load((cnn_output() / "recipe.yaml").read_text())
    recipe["options"].update(options)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


RECIPE_CASES = {
    "parity_atol loose": ({"parity_atol": 1e9}, ["parity_atol is looser"]),
    "parity_atol nan": ({"parity_atol": float("nan")}, ["parity_atol must be a positive"]),
    "parity_atol negative": ({"parity_atol": -1.0}, ["parity_atol must be a positive"]),
    "list of wrong items": ({"batch_sizes": ["a"]}, ["'batch_sizes'", "a list of int"]),
    "inputs not strings": ({"inputs": [1]}, ["'inputs'", "a list of str"]),
    "lr nan": ({"lr": float("nan")}, ["--lr must be a positive finite number"]),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_recipe_bad_values(case, tmp_path):
    options, words = RECIPE_CASES[case]
    result = invoke("convert", "--recipe", str(_recipe(tmp_path, **options)), "--out", "o")
    _refused(result, *words)


def test_recipe_not_utf8(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"sparsify_recipe: 1\noptions: {source: \xff\xfe}\n")
    _refused(invoke("convert", "--recipe", str(path), "--out", "o"), "cannot read recipe")


def test_recipe_cannot_turn_on_unpickling(tmp_path):
    """A recipe that sets trust_checkpoint is refused naming the key; the pickle never runs."""
    marker = tmp_path / "pwned"
    torch.save({"model": _Exploit(marker)}, tmp_path / "evil.pt")
    path = _recipe(tmp_path, source=str(tmp_path / "evil.pt"), trust_checkpoint=True)
    result = invoke("convert", "--recipe", str(path), "--out", str(tmp_path / "o"))
    _refused(result, "security option 'trust_checkpoint'", "--trust-checkpoint")
    assert not marker.exists()
    recorded = yaml.safe_load((cnn_output() / "recipe.yaml").read_text())["options"]
    assert "trust_checkpoint" not in recorded  # never written into a recipe either


def test_report_of_an_empty_report_json(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    _refused(invoke("report", str(tmp_path)), "is not a sparsify report")
    (tmp_path / "report.json").write_bytes(b"\xff\xfe")
    _refused(invoke("report", str(tmp_path)), "cannot read")


# --- ONNX files handed to inspect and bench: exit 0 or 1, never a file outside their folder ---


def _onnx_cases(tmp: Path) -> dict[str, Path]:
    import onnx

    source = cnn_output() / "model.onnx"
    files = {}
    (tmp / "garbage.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    files["garbage"] = tmp / "garbage.onnx"
    (tmp / "empty.onnx").write_bytes(b"")
    files["empty"] = tmp / "empty.onnx"
    huge = onnx.load(str(source))
    huge.graph.initializer[0].dims[0] = 10**12
    onnx.save(huge, str(tmp / "huge_init.onnx"))
    files["huge-dimension weight"] = tmp / "huge_init.onnx"
    wide = onnx.load(str(source))
    wide.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**9
    onnx.save(wide, str(tmp / "huge_input.onnx"))
    files["huge-dimension input"] = tmp / "huge_input.onnx"
    (tmp / "ext").mkdir()
    onnx.save_model(
        onnx.load(str(source)),
        str(tmp / "ext" / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    secret = tmp / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    escaping = onnx.load(str(tmp / "ext" / "model.onnx"), load_external_data=False)
    for tensor in escaping.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(escaping, str(tmp / "ext" / "escaping.onnx"))
    files["external data outside its folder"] = tmp / "ext" / "escaping.onnx"
    (tmp / "ext" / "link.bin").symlink_to(secret)
    linked = onnx.load(str(tmp / "ext" / "model.onnx"), load_external_data=False)
    for tensor in linked.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "link.bin"
    onnx.save(linked, str(tmp / "ext" / "linked.onnx"))
    files["external data through a link out"] = tmp / "ext" / "linked.onnx"
    return files


ONNX_WORDS = {
    "garbage": "not an ONNX model",
    "empty": "the file is empty",
    "huge-dimension weight": "stores less data",
    "huge-dimension input": "too large to allocate",  # inspect reads it (exit 0); bench refuses
    "external data outside its folder": "outside the model's folder",
    "external data through a link out": "outside the model's folder",
}


@pytest.fixture(scope="module")
def onnx_cases(tmp_path_factory):
    return _onnx_cases(tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("command", ["inspect", "bench"])
@pytest.mark.parametrize("case", sorted(ONNX_WORDS))
def test_onnx_bad_input_matrix(case, command, onnx_cases):
    args = [str(onnx_cases[case])] + (
        ["--bench-seconds", "0.05", "--batch-sizes", "1"] * (command == "bench")
    )
    result = invoke(command, *args)
    if case == "huge-dimension input" and command == "inspect":  # static shapes, no allocation
        assert result.exit_code == 0, result.output
        return
    _refused(result, ONNX_WORDS[case])


def test_onnx_external_data_inside_its_folder_is_read(onnx_cases):
    result = invoke("inspect", str(onnx_cases["garbage"].parent / "ext" / "model.onnx"))
    assert result.exit_code == 0, result.output


# --- Code never runs from a file unless the command line says so ---

MARKER_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)
    def forward(self, x):
        return self.head(self.fc(x)){tail}
"""


def test_inspect_never_imports_the_module_a_recipe_names(tmp_path, monkeypatch):
    """The folder's recipe names ``planted:Net``; inspect reads model.onnx instead, and says
    which command rebuilds the torch model."""
    marker = tmp_path / "imported"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "planted.py").write_text(MARKER_MODULE.format(marker=str(marker), tail=""))
    out = tmp_path / "out"
    result = invoke("convert", "--arch", "planted:Net", "--input-shape", "1,8", "--out", "out")
    assert result.exit_code == 0, result.output
    marker.unlink()  # convert imported it: the command line said so
    sys.modules.pop("planted", None)
    for command in (["inspect", str(out)], ["inspect", str(out / "model_sparse.safetensors")]):
        result = invoke(*command, "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        assert doc["format"] == "onnx" and "--arch planted:Net" in doc["note"]
        assert any(r["declared"] == "2:4" for r in doc["layers"])
    assert invoke("bench", str(out), *FAST[:4]).exit_code == 0
    assert invoke("report", str(out)).exit_code == 0
    assert not marker.exists() and "planted" not in sys.modules
    (out / "model.onnx").unlink()
    _refused(invoke("inspect", str(out)), f"sparsify inspect {out} --arch planted:Net")
    assert not marker.exists()


def test_nan_outputs_fail_parity(tmp_path, monkeypatch):
    """Finite weights, NaN outputs: before, NaN > atol was False and the model was 'verified'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nanmodel.py").write_text(
        MARKER_MODULE.format(marker=str(tmp_path / "m"), tail=' * float("nan")')
    )
    result = invoke(
        "convert", "--arch", "nanmodel:Net", "--input-shape", "1,8", "--out", "o", *FAST
    )
    _refused(result, "gives NaN or Inf outputs")
    assert not (tmp_path / "o").exists()


def test_report_html_escapes_every_value(tmp_path):
    doc = json.loads((cnn_output() / "report.json").read_text())

    def poison(value, key=None):
        if isinstance(value, dict):
            return {k: poison(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [poison(v, key) for v in value]
        if isinstance(value, str) and key != "op":
            return "<script>x</script>"
        return value

    doc = poison(doc)
    doc["environment"]["threads"] = "<script>x</script>"
    doc["accuracy"]["samples"] = "<script>x</script>"
    (tmp_path / "report.json").write_text(json.dumps(doc))
    assert invoke("report", str(tmp_path)).exit_code == 0
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;x" in page


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    hf = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "bert"
    config = hf.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=50,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    hf.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _hostile_copy(bert: Path, tmp: Path, case: str, marker: Path) -> Path:
    import shutil

    folder = tmp / case.replace(" ", "_")
    shutil.copytree(bert, folder)
    config = json.loads((folder / "config.json").read_text())
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    if case == "auto_map":
        config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "evil.py").write_text(code)
    elif case == "python file":
        (folder / "modeling_evil.py").write_text(code)
    elif case == "pickled bin":
        (folder / "model.safetensors").unlink()
        torch.save({"x": _Exploit(marker)}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("case", ["auto_map", "python file", "pickled bin"])
def test_hf_folder_that_would_run_code_is_refused(case, tiny_bert, tmp_path):
    marker = tmp_path / "ran"
    folder = _hostile_copy(tiny_bert, tmp_path, case, marker)
    import os
    import pty
    import subprocess

    terminal, tty = pty.openpty()  # a terminal on stdin: a [y/N] prompt would hang until timeout
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sparsify_cli", "convert", str(folder)]
            + ["--out", str(tmp_path / "o"), *FAST],
            stdin=tty,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.close(terminal)
        os.close(tty)
    _expect_error(proc, "pickled Python objects" if case == "pickled bin" else "custom code")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_hf_folder_links_out_of_it_are_not_copied(tiny_bert, tmp_path):
    import shutil

    folder = tmp_path / "bert"
    shutil.copytree(tiny_bert, folder)
    secret = tmp_path / "shadow"
    secret.write_text("root:secret")
    (folder / "tokenizer.json").symlink_to(secret)
    (folder / "vocab.txt").write_text("[PAD]\n")
    result = invoke("convert", str(folder), "--out", str(tmp_path / "o"), *FAST)
    assert result.exit_code == 0, result.output
    copied = tmp_path / "o" / "hf_model"
    assert (copied / "vocab.txt").exists() and not (copied / "tokenizer.json").exists()
