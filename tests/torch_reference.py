"""PyTorch reference script for the weight-import tests (run in a subprocess).

    python -m tests.torch_reference resnets OUT_DIR
    python -m tests.torch_reference checkpoints OUT_DIR

It writes torchvision state dicts and MultiGrain / CGD (leftthomas) checkpoints with random
weights in exactly the published layouts, and `refs.npz` with PyTorch forward passes written
here from the papers' definitions (independent of keras-cgd). It runs in its own process
because importing torchvision (triton) after TensorFlow crashes the CUDA builds of torch,
and so that the tests never import torch next to Keras.
"""

import collections
import copy
import os
import sys

import numpy as np
import torch
import torchvision

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CGD_CONFIGS = ("S", "M", "G", "SMG")
CGD_CLASSES = 98
CGD_DIM = 1536


def seeded(factory, seed):
    """`factory()` with the global torch RNG seeded: torchvision's own random init."""
    torch.manual_seed(seed)
    return factory()


def randomize(net, seed, images):
    """Random BN affine parameters (the init leaves them 1/0) and BN statistics measured on
    `images` (NHWC, normalised), as training leaves them, so activations and logits stay
    O(1) as in a trained network (random statistics let them grow to ~1e3, where float32
    cannot hold 1e-4 absolute agreement). Returns the net in eval mode."""
    torch.manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
        # Residual branches end with a small BN scale, as in trained ResNets: a random
        # network with unit-scale branches is chaotic (it amplifies float32 rounding ~1e3x).
        for m in net.modules():
            if isinstance(m, torchvision.models.resnet.Bottleneck):
                m.bn3.weight.uniform_(0.1, 0.3)
        net.train()
        net(images if torch.is_tensor(images) else nchw(images))
    for m in bns:
        m.momentum = 0.1
    return net.eval()


def with_strides(net, strides):
    """torchvision ResNet with stage strides `strides` (block 0's conv2 and downsample.0)."""
    net = copy.deepcopy(net)
    for stage, stride in enumerate(strides, start=1):
        block = getattr(net, f"layer{stage}")[0]
        block.conv2.stride = (stride, stride)
        block.downsample[0].stride = (stride, stride)
    return net


def trunk(net):
    """conv1 … layer4 of a torchvision ResNet (no avgpool, fc), as an nn.Sequential."""
    return torch.nn.Sequential(*list(net.children())[:-2])


def numpy_dict(module_or_dict):
    sd = module_or_dict.state_dict() if hasattr(module_or_dict, "state_dict") else module_or_dict
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def normalize(images):
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


# --------------------------------------------------------------------------- resnets


def resnets(out):
    from safetensors.numpy import save_file

    refs = {}
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    refs["images50"] = x
    net = randomize(seeded(torchvision.models.resnet50, 0), 0, x)
    torch.save(net.state_dict(), os.path.join(out, "resnet50.pth"))
    sd = numpy_dict(net)
    np.savez(os.path.join(out, "resnet50.npz"), **sd)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, os.path.join(out, "resnet50.safetensors"))
    with torch.no_grad():
        for name, strides in {
            "torchvision": (1, 2, 2, 2), "last_stride_1": (1, 2, 2, 1), "stage3_stride_1": (1, 2, 1, 2),
        }.items():
            refs[f"features/{name}"] = trunk(with_strides(net, strides))(nchw(x)).numpy().transpose(0, 2, 3, 1)
    # Other architectures: their names and shapes matter, not their values (zeros compress).
    for name in ("resnet101", "resnet18"):
        state = numpy_dict(getattr(torchvision.models, name)())
        np.savez_compressed(os.path.join(out, f"{name}.npz"), **{k: np.zeros_like(v) for k, v in state.items()})
    np.savez(os.path.join(out, "refs.npz"), **refs)


# --------------------------------------------------------------------------- MultiGrain


def gem(f, p, eps=1e-6):
    """GeM over H, W of an NCHW map: mean(clamp(f, eps)^p)^(1/p); p=1 → mean, p=inf → max."""
    if p == float("inf"):
        return f.amax(dim=(2, 3))
    if p == 1:
        return f.mean(dim=(2, 3))
    return f.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def l2n(v, eps=1e-6):
    """MultiGrain's l2n: v / (|v| + eps)."""
    return v / (v.norm(dim=1, keepdim=True) + eps)


def multigrain_checkpoint(seed, p, whitened, images, classes=1000):
    net = randomize(seeded(torchvision.models.resnet50, seed), seed, images)
    state = collections.OrderedDict()
    for k, v in net.state_dict().items():
        if not k.startswith("fc."):
            state["features." + k] = v
    state["pool.p"] = torch.tensor(float(p))
    g = torch.Generator().manual_seed(seed + 100)
    d = 2048 + int(whitened)
    weight = torch.randn(classes, d, generator=g) * 0.02
    bias = torch.randn(classes, generator=g) * 0.1
    state["classifier.weight"], state["classifier.bias"] = weight, bias
    if whitened:
        state["whitening.pca.pca_P"] = torch.randn(d, d, generator=g) * (3.0 / d**0.5)
        state["whitening.pca.pca_m"] = torch.randn(d, generator=g) * 0.01 + 1.0 / d**0.5
    return net, state


def multigrain_forward(net, state, x, whitened):
    """MultiGrain's forward with the checkpoint's tensors: GeM → [bias channel, l2n,
    (· − m) P] → classifier; embedding = l2n(whitened or raw GeM)."""
    p = float(state["pool.p"])
    with torch.no_grad():
        v = gem(trunk(net)(nchw(x)), p)
        if whitened:
            v = torch.cat([v, torch.ones_like(v[:, :1])], dim=1)
            v = (l2n(v) - state["whitening.pca.pca_m"]) @ state["whitening.pca.pca_P"]
        logits = v @ state["classifier.weight"].T + state["classifier.bias"]
        return l2n(v).numpy(), logits.numpy()


# --------------------------------------------------------------------------- CGD (leftthomas layout)


class BranchNorm(torch.nn.Module):
    """Parameter-free L2 normalisation (keeps `main_modules.{i}.0` the Linear)."""

    def forward(self, v):
        return torch.nn.functional.normalize(v, dim=-1)


class CGDReference(torch.nn.Module):
    """The leftthomas/CGD module layout: features.{0..7}, main_modules.{i}.{0,1},
    auxiliary_module.{0,1}; forward written from the paper's definitions."""

    def __init__(self, gd_config, feature_dim, classes, seed, images, features=None):
        super().__init__()
        if features is None:
            features = trunk(with_strides(seeded(torchvision.models.resnet50, seed), (1, 2, 1, 2)))
        self.features = features
        k = feature_dim // len(gd_config)
        self.gd_config = gd_config
        self.main_modules = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(2048, k, bias=False), BranchNorm()) for _ in gd_config
        )
        self.auxiliary_module = torch.nn.Sequential(torch.nn.BatchNorm1d(2048), torch.nn.Linear(2048, classes))
        if features is None or not getattr(features, "calibrated", False):
            randomize(self, seed + 1, images)
        else:  # a calibrated backbone shared between configurations: calibrate the head only
            with torch.no_grad():
                first = self.descriptor(features(nchw(images)), gd_config[0])
            randomize(self.auxiliary_module, seed + 1, first)
            self.eval()

    @staticmethod
    def descriptor(f, letter):
        if letter == "S":
            return f.mean(dim=(2, 3))
        if letter == "M":
            return f.amax(dim=(2, 3))
        m = f.pow(3).mean(dim=(2, 3))
        return torch.sign(m) * m.abs().pow(1.0 / 3)

    def forward(self, x):
        f = self.features(x)
        parts, logits = [], None
        for i, letter in enumerate(self.gd_config):
            d = self.descriptor(f, letter)
            if i == 0:
                logits = self.auxiliary_module(d)
            parts.append(self.main_modules[i](d))
        return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=1), logits


def cgd_file_name(gd_config):
    return f"car_uncropped_resnet50_{gd_config}_{CGD_DIM}_0.1_0.5_0.1_128_model.pth"


def photos(size=64):
    """Three real photos (scikit-image's astronaut, chelsea, coffee) at size × size: their
    descriptors differ as real images' do, so the BN statistics measured on them are those
    of a trained head (noise images give near-identical descriptors, near-zero variances)."""
    import skimage.data
    from PIL import Image

    out = [np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((size, size), Image.BILINEAR))
           for name in ("astronaut", "chelsea", "coffee")]
    return np.stack(out).astype(np.uint8)


def checkpoints(out):
    refs = {}
    images = photos()
    refs["images"] = images
    x = normalize(images)
    for name, seed, whitened in (("joint_3B_0.5", 10, False), ("multigrain_whitened", 11, True)):
        net, state = multigrain_checkpoint(seed, 3.0, whitened, x)
        torch.save({"model_state": state}, os.path.join(out, f"{name}.pth"))
        refs[f"{name}/embedding"], refs[f"{name}/logits"] = multigrain_forward(net, state, x, whitened)
    shared = None
    for i, gd in enumerate(CGD_CONFIGS):
        model = CGDReference(gd, CGD_DIM, CGD_CLASSES, 20 + 3 * i, x, features=shared)
        if shared is None:  # one backbone for every configuration (its heads differ)
            shared = model.features
            shared.calibrated = True
        torch.save(model.state_dict(), os.path.join(out, cgd_file_name(gd)))
        with torch.no_grad():
            emb, logits = model(nchw(x))
        refs[f"cgd_{gd}/embedding"], refs[f"cgd_{gd}/logits"] = emb.numpy(), logits.numpy()
    np.savez(os.path.join(out, "refs.npz"), **refs)


if __name__ == "__main__":
    task, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    {"resnets": resnets, "checkpoints": checkpoints}[task](out_dir)
