"""Learnability check of the demo dataset: random ResNet-18 features pooled over GT boxes, linear probes."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.ops import roi_align

root = Path(sys.argv[1])
scale_to = int(sys.argv[2]) if len(sys.argv) > 2 else 224
torch.manual_seed(0)
net = torchvision.models.resnet18(weights=None).eval()
trunk = torch.nn.Sequential(*list(net.children())[:-2])
data = json.loads((root / "dataset_demo.json").read_text())
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
feats, labels = [], {"color": [], "shape": [], "size": []}
splits = []
t0 = time.time()
with torch.no_grad():
    for batch_start in range(0, len(data["images"]), 64):
        batch = data["images"][batch_start:batch_start + 64]
        ims = torch.stack([torch.from_numpy(np.array(Image.open(root / e["filepath"] / e["filename"]).convert("RGB")))
                           .permute(2, 0, 1)
                           for e in batch]).float() / 255
        size = ims.shape[-1]
        ims = torch.nn.functional.interpolate(ims, size=(scale_to, scale_to), mode="bilinear", align_corners=False)
        fmap = trunk((ims - mean) / std)
        boxes = [torch.tensor([o["box"] for o in e["objects"]], dtype=torch.float32) for e in batch]
        pooled = roi_align(fmap, boxes, output_size=(2, 2), spatial_scale=fmap.shape[-1] / size, sampling_ratio=2,
                           aligned=True)
        feats.append(pooled.mean(dim=(2, 3)))
        for e in batch:
            for o in e["objects"]:
                for k in labels:
                    labels[k].append(o[k])
                splits.append(e["split"])
x = torch.cat(feats)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
train = torch.tensor([s == "train" for s in splits])
test = torch.tensor([s == "test" for s in splits])
print(f"features {tuple(x.shape)} in {time.time() - t0:.1f}s")
for key, values in labels.items():
    names = sorted(set(values))
    y = torch.tensor([names.index(v) for v in values])
    probe = torch.nn.Linear(x.shape[1], len(names))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[train]), y[train]).backward()
        opt.step()
    acc = (probe(x[test]).argmax(1) == y[test]).float().mean().item()
    chance = torch.bincount(y[test]).max().item() / test.sum().item()
    print(f"{key}: test accuracy {acc:.3f} ({len(names)} classes, majority baseline {chance:.3f})")
