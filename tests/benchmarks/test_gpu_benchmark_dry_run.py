"""benchmarks/gpu_train_throughput.py cannot rot: its dry run works on CPU, and its
PyTorch trunks are the Keras ones (same parameters and feature-map shapes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_train_throughput.py")


def test_dry_run_prints_the_json_fields():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run"], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert result["dry_run"] is True and result["errors"] == {}
    for recipe in ("cgd", "multigrain"):
        rows = result[recipe]
        for key in ("keras_img_per_s", "torch_img_per_s", "torch_compile_img_per_s"):
            assert rows[key] > 0, (recipe, key, rows)
        expected = rows["keras_img_per_s"] / rows["torch_compile_img_per_s"]
        assert rows["ratio_keras_over_torch_compile"] == pytest.approx(expected, rel=0.02, abs=1e-3)
    for key in ("keras_img_per_s", "torch_img_per_s", "torch_compile_img_per_s", "ratio_keras_over_torch_compile"):
        assert result[key] == result["cgd"][key]  # top level: the CGD recipe
    assert not os.path.exists(os.path.join(ROOT, "benchmarks", "results", ".gpu_train_throughput.json.tmp"))


def _torch_state_size(module):
    """Parameters plus BatchNorm running statistics (Keras counts both as weights)."""
    params = sum(p.numel() for p in module.parameters())
    stats = sum(b.numel() for name, b in module.named_buffers() if name.endswith(("running_mean", "running_var")))
    return params + stats


@pytest.mark.parametrize("name, last_stride, size", [("tiny_convnet", 1, 32), ("resnet50", 1, 64)])
def test_torch_trunks_match_keras_backbones(name, last_stride, size):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import _torch_models

    from keras_cgd.models import build_backbone

    keras_net = build_backbone(name, input_shape=(size, size, 3), last_stride=last_stride)
    torch_net = _torch_models.make_trunk(name, last_stride).eval()
    assert _torch_state_size(torch_net) == keras_net.count_params()
    with torch.no_grad():
        out = torch_net(torch.zeros(1, 3, size, size))
    keras_shape = tuple(keras_net.output.shape[1:])  # (H, W, C)
    assert tuple(out.shape[1:]) == (keras_shape[2], keras_shape[0], keras_shape[1])
    kernels = sorted(tuple(w.shape) for w in keras_net.weights if len(w.shape) == 4)  # (kh, kw, in, out)
    torch_kernels = sorted((k[2], k[3], k[1], k[0]) for k in (p.shape for p in torch_net.parameters()) if len(k) == 4)
    assert kernels == torch_kernels
    assert np.isfinite(out.numpy()).all()
