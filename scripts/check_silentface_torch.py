"""Check the Silent-Face build against PyTorch itself (optional; build-only venv, never CI).

PyTorch's own loader (`torch.load`) reads the released .pth files; the arrays must equal what
scripts/build_silentface.py's torch-free reader gets. The network is then assembled from
torch.nn layers named exactly as the state dict (`load_state_dict(strict=True)`: every weight
placed, none missing or left over) and run in eval mode by PyTorch's kernels on face crops of
the face-api demo photos (never fixtures); its softmax is compared with the shipped float32 and
int8 TFLite files.

    python -m venv /var/cache/edge-gate-build/torchenv
    /var/cache/edge-gate-build/torchenv/bin/pip install -r scripts/requirements-build-torch.txt
    /var/cache/edge-gate-build/torchenv/bin/python scripts/check_silentface_torch.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import build_silentface as bs  # noqa: E402


def torch_net(sd: dict):
    """MiniFASNet from torch.nn layers, its module tree named as the state dict's keys."""
    import torch
    from torch import nn

    def block(w, act=True, stride=1, pad=None):
        o, i, kh, _ = w.shape
        depthwise = i == 1 and o > 1  # groups = channels
        m = nn.Module()
        m.conv = nn.Conv2d(
            o if depthwise else i,
            o,
            kh,
            stride,
            (kh - 1) // 2 if pad is None else pad,
            groups=o if depthwise else 1,
            bias=False,
        )
        m.bn = nn.BatchNorm2d(o)
        if act:
            m.prelu = nn.PReLU(o)
        return m

    def run_block(m, x):
        x = m.bn(m.conv(x))
        return m.prelu(x) if hasattr(m, "prelu") else x

    def unit(prefix, stride):
        m = nn.Module()
        m.conv = block(sd[f"{prefix}.conv.conv.weight"])
        m.conv_dw = block(sd[f"{prefix}.conv_dw.conv.weight"], stride=stride)
        m.project = block(sd[f"{prefix}.project.conv.weight"], act=False)
        if f"{prefix}.se_module.fc1.weight" in sd:
            se = nn.Module()
            c = sd[f"{prefix}.se_module.fc1.weight"]
            se.fc1 = nn.Conv2d(c.shape[1], c.shape[0], 1, bias=False)
            se.bn1 = nn.BatchNorm2d(c.shape[0])
            se.fc2 = nn.Conv2d(c.shape[0], c.shape[1], 1, bias=False)
            se.bn2 = nn.BatchNorm2d(c.shape[1])
            m.se_module = se
        return m

    def run_unit(m, x, residual):
        y = run_block(m.project, run_block(m.conv_dw, run_block(m.conv, x)))
        if hasattr(m, "se_module"):
            se = m.se_module
            s = y.mean(dim=(2, 3), keepdim=True)
            s = torch.sigmoid(se.bn2(se.fc2(torch.relu(se.bn1(se.fc1(s))))))
            y = y * s
        return x + y if residual else y

    net = nn.Module()
    for name, kind, stride in bs.STAGES:
        if kind in ("block", "linear"):
            pad = 0 if name == "conv_6_dw" else None
            setattr(net, name, block(sd[f"{name}.conv.weight"], kind == "block", stride, pad))
        elif kind == "depthwise":
            setattr(net, name, unit(name, stride))
        else:
            n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"{name}.model."))
            holder = nn.Module()
            holder.model = nn.Sequential(*[unit(f"{name}.model.{i}", 1) for i in range(n)])
            setattr(net, name, holder)
    net.linear = nn.Linear(512, 128, bias=False)
    net.bn = nn.BatchNorm1d(128)
    net.prob = nn.Linear(128, 3, bias=False)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    net.eval()

    def forward(x):
        for name, kind, _stride in bs.STAGES:
            m = getattr(net, name)
            if kind in ("block", "linear"):
                x = run_block(m, x)
            elif kind == "depthwise":
                x = run_unit(m, x, residual=False)
            else:
                for u in m.model:
                    x = run_unit(u, x, residual=True)
        x = net.prob(net.bn(net.linear(x.flatten(1))))
        return torch.softmax(x, dim=1)

    return forward


def main() -> int:
    import build_common as bc  # the builders' shared leaf (scripts/ is on sys.path)
    import torch

    from edge.vision.liveness import PadSpec
    from edge.vision.runtime import TFLiteModel

    report = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = bc.BuildContext(Path(tmp), Path(tmp), {}, {}, None)
        photos = bc.face_api_demo_photos(ctx)
    specs = {q: PadSpec.load(ROOT / "models", f"silentface_{q}") for q in ("float", "int8")}
    worst = 0.0
    for i, (name, (fname, _digest, scale)) in enumerate(bs.SF_MODELS.items()):
        ours, _ = bs.load_state_dict(name)
        official = torch.load(bs.SF_DIR / fname, map_location="cpu", weights_only=True)
        official = {k.removeprefix("module."): v.numpy() for k, v in official.items()}
        same = sorted(official) == sorted(ours) and all(
            np.array_equal(official[k].astype(np.float32), ours[k]) for k in ours
        )
        crops = np.stack(bs.crops_at(photos, scale)).astype(np.float32)
        crops = np.concatenate([crops, crops[:, :, ::-1]])  # and their mirror images
        with torch.no_grad():
            ref = torch_net(official)(torch.from_numpy(crops.transpose(0, 3, 1, 2))).numpy()
        row = {"reader_equals_torch_load": same, "crops": len(crops)}
        for q, spec in specs.items():
            m = TFLiteModel(spec.members[i].path, 1)
            got = np.concatenate([m.run(c[None])[0] for c in crops])
            d = np.abs(got - ref)
            row[q] = {
                "max_abs_diff": float(f"{d.max():.3g}"),
                "median_abs_diff_live": float(f"{np.median(d[:, 1]):.3g}"),
                "argmax_agree": float(np.mean(got.argmax(1) == ref.argmax(1))),
            }
        worst = max(worst, row["float"]["max_abs_diff"])
        report[name] = row
        if not same:
            print(f"{name}: the torch-free reader differs from torch.load", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=1))
    return 0 if worst < bs.MAX_FLOAT_DIFF else 1


if __name__ == "__main__":
    sys.exit(main())
