"""ONNX export of both samples: pattern read back from the file, parity, tamper detection."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from sparsify_cli.exporters import runtime
from sparsify_cli.exporters.onnx_export import export_onnx, weight_refs
from sparsify_cli.exporters.verify import max_abs_diff, verify_pattern
from sparsify_cli.passes import FoldConfig, NMConfig, PassContext, run_passes, select_layers
from sparsify_cli.passes.manifest import Manifest
from sparsify_cli.samples import SAMPLES


def _sparse_sample(name, n, m, tmp_path):
    s = SAMPLES[name]
    model = s.build()
    model.load_state_dict(torch.load(s.checkpoint, weights_only=True)["state_dict"])
    model.eval()
    example = torch.randn(1, *s.input_shape[1:])
    targets = [c.name for c in select_layers(model, m, example) if c.selected]
    ctx = PassContext(targets=targets)
    run_passes(model, [NMConfig(n, m), FoldConfig()], ctx)
    manifest = Manifest(ctx.manifest)
    manifest.save(tmp_path / "manifest.safetensors")
    path = tmp_path / "model.onnx"
    export_onnx(model, example, path)
    return model, manifest, path


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("nm", [(2, 4), (1, 8)])
def test_pattern_and_parity_on_both_samples(name, nm, tmp_path):
    model, manifest, path = _sparse_sample(name, *nm, tmp_path)
    loaded = Manifest.load(tmp_path / "manifest.safetensors")
    assert set(loaded.entries) == set(manifest.entries)
    checks = verify_pattern(path, loaded)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    x = np.random.default_rng(0).standard_normal((16, *SAMPLES[name].input_shape[1:]))
    x = x.astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert max_abs_diff(runtime.run(runtime.session(path), x), ref) <= 1e-4


def test_weights_are_found_in_gemm_matmul_and_bn_folded_conv(tmp_path):
    _, manifest, path = _sparse_sample("digits_transformer", 2, 4, tmp_path)
    refs = weight_refs(onnx.load(str(path)), list(manifest.by_module()))
    assert {r.op for rs in refs.values() for r in rs} == {"MatMul"}
    assert refs["blocks.0.fc1"][0].in_axis == 0
    _, manifest, path = _sparse_sample("digits_cnn", 2, 4, tmp_path)
    refs = weight_refs(onnx.load(str(path)), list(manifest.by_module()))
    assert refs["layer2.shortcut.0"][0].node == "/layer2/shortcut/shortcut.0/Conv"
    assert all(len(r) == 1 and r[0].op == "Conv" and r[0].in_axis == 1 for r in refs.values())


def test_tampered_weight_is_caught(tmp_path):
    _, manifest, path = _sparse_sample("digits_cnn", 2, 4, tmp_path)
    model = onnx.load(str(path))
    ref = weight_refs(model, ["layer1.conv1"])["layer1.conv1"][0]
    init = next(i for i in model.graph.initializer if i.name == ref.initializer)
    arr = numpy_helper.to_array(init).copy()
    arr[arr == 0] = 0.5  # densify
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))
    bad = {c.module: c for c in verify_pattern(path, manifest)}["layer1.conv1"]
    assert not bad.ok and "outside the mask" in bad.detail
