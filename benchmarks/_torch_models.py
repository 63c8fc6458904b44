"""PyTorch versions of keras-cgd's CGD and MultiGrain training graphs, for benchmarks only.

Written for `benchmarks/gpu_train_throughput.py` so that the PyTorch rows train the same
architecture and losses as the Keras rows (needs only `torch`, no torchvision):

- `ResNet50`: the layout of `keras.applications.ResNet50` (keras-cgd's "resnet50"): the
  stride of a stage sits in the first 1×1 convolution of its first block, convolutions
  have biases, BatchNorm ε = 1.001e-5; `last_stride=1` removes the downsampling of the
  last stage (CGD). `TinyConvNet` mirrors keras-cgd's "tiny_convnet" for dry runs.
- `CGDNet`: SPoC (mean), MAC (max), GeM (p = 3, clamped at 1e-6) → bias-free Linear →
  L2 per branch, concatenated → L2 = embedding; raw first descriptor → BatchNorm1d →
  Linear = logits. Loss: batch-hard triplet (margin 0.1) + cross-entropy with label
  smoothing 0.1 and temperature 0.5.
- `MultiGrainNet`: GeM (p = 3) → raw embedding → Linear = logits; L2 → margin loss
  (α = 0.2, learnable β from 1.2) with distance-weighted negative sampling (weights
  normalised per anchor, Gumbel top-k, as many negatives as positives); loss
  λ·CE + (1 − λ)·margin with λ = 0.5.

Inputs are uint8 NHWC batches (as keras-cgd's pipelines emit); the models normalise
with the ImageNet mean/std inside, as keras-cgd models do.
"""

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1.001e-5  # keras.applications ResNet


class _Normalize(nn.Module):
    """uint8 NHWC → normalised float NCHW (channels-last memory format)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("scale", 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0))

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float()
        return ((x - self.mean) * self.scale).contiguous(memory_format=torch.channels_last)


class _Bottleneck(nn.Module):
    def __init__(self, in_ch, width, stride, project):
        super().__init__()
        out_ch = 4 * width
        self.conv1 = nn.Conv2d(in_ch, width, 1, stride=stride)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width, eps=BN_EPS)
        self.conv3 = nn.Conv2d(width, out_ch, 1)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.shortcut = None
        if project:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride), nn.BatchNorm2d(out_ch, eps=BN_EPS))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet50(nn.Module):
    """ResNet-50 trunk in the keras.applications layout; output (N, 2048, H/32, W/32)."""

    def __init__(self, last_stride=2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64, eps=BN_EPS), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks, in_ch = [], 64
        for stage, (width, count) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            stride = 1 if stage == 0 else (last_stride if stage == 3 else 2)
            for b in range(count):
                blocks.append(_Bottleneck(in_ch, width, stride if b == 0 else 1, project=b == 0))
                in_ch = 4 * width
        self.blocks = nn.Sequential(*blocks)
        self.channels = in_ch

    def forward(self, x):
        return self.blocks(self.stem(x))


class TinyConvNet(nn.Module):
    """keras-cgd's "tiny_convnet": 4 stages of conv-BN-ReLU + residual conv-BN."""

    def __init__(self, last_stride=2, widths=(32, 64, 128, 256)):
        super().__init__()
        layers, in_ch = [], 3
        for i, width in enumerate(widths):
            stride = 2 if i < len(widths) - 1 else last_stride
            layers.append(nn.ModuleDict({
                "conv1": nn.Conv2d(in_ch, width, 3, stride=stride, padding=1, bias=False),
                "bn1": nn.BatchNorm2d(width, momentum=0.1),
                "conv2": nn.Conv2d(width, width, 3, padding=1, bias=False),
                "bn2": nn.BatchNorm2d(width, momentum=0.1),
            }))
            in_ch = width
        self.stages = nn.ModuleList(layers)
        self.channels = in_ch

    def forward(self, x):
        for s in self.stages:
            x = F.relu(s["bn1"](s["conv1"](x)))
            x = F.relu(x + s["bn2"](s["conv2"](x)))
        return x


class MicroNet(nn.Module):
    """Dry-run trunk: conv 3×3 stride 2 (16 channels, no bias) → BatchNorm → ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16, eps=1e-5, momentum=0.1)
        self.channels = 16

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


TRUNKS = ("resnet50", "tiny_convnet", "micro")


def make_trunk(name, last_stride):
    if name == "resnet50":
        return ResNet50(last_stride)
    if name == "tiny_convnet":
        return TinyConvNet(last_stride)
    if name == "micro":
        return MicroNet()
    raise ValueError(f"Invalid value received for argument `backbone`. Expected one of {TRUNKS}. "
                     f"Received: backbone={name!r}")


def gem(x, p=3.0, eps=1e-6):
    """Generalized mean over H, W of an NCHW map (clamped at eps), in float32."""
    x = x.float().clamp(min=eps)
    return x.pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def pairwise_distances(x, eps=1e-12):
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.t()
    return d2.clamp(min=eps).sqrt()


def batch_hard_triplet(emb, labels, margin=0.1):
    d = pairwise_distances(emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos, neg = same & ~eye, ~same
    hardest_pos = torch.where(pos, d, torch.zeros_like(d)).amax(dim=1)
    hardest_neg = torch.where(neg, d, d.max() + 1.0).amin(dim=1)
    valid = (pos.any(dim=1) & neg.any(dim=1)).float()
    per = F.relu(hardest_pos - hardest_neg + margin) * valid
    return per.sum() / valid.sum().clamp(min=1.0)


def smoothed_cross_entropy(logits, labels, smoothing=0.1, temperature=0.5):
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    nll = -log_p.gather(1, labels[:, None])[:, 0]
    return ((1.0 - smoothing) * nll + smoothing * (-log_p.mean(dim=-1))).mean()


class CGDNet(nn.Module):
    """CGD training graph: forward(images uint8 NHWC, labels) -> loss."""

    def __init__(self, num_classes, backbone="resnet50", descriptors="SMG", embedding_dim=1536, last_stride=1):
        super().__init__()
        self.normalize = _Normalize()
        self.trunk = make_trunk(backbone, last_stride)
        c = self.trunk.channels
        self.descriptors = descriptors
        self.projections = nn.ModuleList(
            [nn.Linear(c, embedding_dim // len(descriptors), bias=False) for _ in descriptors])
        self.classifier_bn = nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)
        self.classifier = nn.Linear(c, num_classes)

    def pool(self, fmap, letter):
        if letter == "S":
            return fmap.float().mean(dim=(2, 3))
        if letter == "M":
            return fmap.float().amax(dim=(2, 3))
        return gem(fmap, 3.0)

    def forward(self, images, labels):
        fmap = self.trunk(self.normalize(images))
        branches, first = [], None
        for letter, proj in zip(self.descriptors, self.projections):
            pooled = self.pool(fmap, letter)
            first = pooled if first is None else first
            branches.append(F.normalize(proj(pooled).float(), dim=-1))
        emb = F.normalize(torch.cat(branches, dim=-1), dim=-1)
        logits = self.classifier(self.classifier_bn(first))
        return batch_hard_triplet(emb, labels) + smoothed_cross_entropy(logits, labels)


def distance_weighted_negatives(d, pos, neg, dim, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Per-anchor distance-weighted negatives (Wu et al. 2017), as many as positives."""
    dim = float(dim)
    dc = d.detach().clamp(min=cutoff)
    log_w = (2.0 - dim) * dc.log() - 0.5 * (dim - 3.0) * (1.0 - 0.25 * dc * dc).clamp(min=1e-8).log()
    eligible = neg & (d.detach() < nonzero_loss_cutoff)
    has = eligible.any(dim=1, keepdim=True)
    eligible = torch.where(has, eligible, neg)
    log_w = torch.where(has, log_w, torch.zeros_like(log_w))
    row_max = torch.where(eligible, log_w, torch.full_like(log_w, -1e30)).amax(dim=1, keepdim=True)
    u = torch.rand_like(d).clamp(1e-7, 1 - 1e-7)
    scores = torch.where(eligible, log_w - row_max - (-u.log()).log(), torch.full_like(d, -1e30))
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)
    return (rank < pos.sum(dim=1, keepdim=True)) & eligible


class MultiGrainNet(nn.Module):
    """MultiGrain training graph: forward(images uint8 NHWC, instance ids, class ids) -> loss."""

    def __init__(self, num_classes, backbone="resnet50", classification_weight=0.5, alpha=0.2, beta_init=1.2):
        super().__init__()
        self.normalize = _Normalize()
        self.trunk = make_trunk(backbone, 2)
        self.classifier = nn.Linear(self.trunk.channels, num_classes)
        self.beta = nn.Parameter(torch.tensor(beta_init))
        self.lam = classification_weight
        self.alpha = alpha

    def forward(self, images, instance_ids, class_ids):
        raw = gem(self.trunk(self.normalize(images)), 3.0)
        logits = self.classifier(raw)
        emb = F.normalize(raw, dim=-1)
        d = (pairwise_distances(emb) ** 2 + 1e-8).sqrt()
        same = instance_ids[:, None] == instance_ids[None, :]
        eye = torch.eye(len(instance_ids), dtype=torch.bool, device=emb.device)
        pos, neg = same & ~eye, ~same
        chosen = distance_weighted_negatives(d, pos, neg, emb.shape[-1])
        pos_t = F.relu(d - self.beta + self.alpha) * pos.float()
        neg_t = F.relu(self.beta - d + self.alpha) * chosen.float()
        count = (pos_t > 0).float().sum() + (neg_t > 0).float().sum()
        margin = (pos_t.sum() + neg_t.sum()) / count.clamp(min=1.0)
        return self.lam * F.cross_entropy(logits.float(), class_ids) + (1.0 - self.lam) * margin


def make_optimizer(model, family):
    """CGD: Adam 1e-4; MultiGrain: SGD lr 0.2, momentum 0.9, weight decay 1e-4 (β excluded)."""
    if family == "cgd":
        return torch.optim.Adam(model.parameters(), lr=1e-4)
    decay = [p for n, p in model.named_parameters() if n != "beta"]
    return torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": [model.beta], "weight_decay": 0.0}],
                           lr=0.2, momentum=0.9)
