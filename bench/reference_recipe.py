"""The reference GLANN implementation's MNIST recipe, under a wall-clock budget, for a same-budget comparison.

    python bench/reference_recipe.py --root ../shared/data --glo-minutes 19.3 --imle-minutes 6.7 \
        --out outputs/reference_recipe
    glann-eval images=outputs/reference_recipe/samples.npz data=mnist data.root=../shared/data eval.metrics=[fid] \
        eval.fid_stats=../shared/models/mnist_test_inception_stats.npz \
        eval.inception_weights=../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth

The authors' code (github.com/yedidh/glann, configs/mnist.yaml) cannot run here as published: it calls
``.cuda()`` throughout and its loss downloads ImageNet VGG16 weights. This script trains the same recipe,
written afresh for CPU or GPU, as these facts of that code describe it:

* GLO: an ``nn.Embedding`` of 64-d codes (init N(0, 0.01), renormalised to the unit sphere after every epoch
  and in the generator's forward); generator Linear 64->1024 (no bias) -> LeakyReLU(0.2) -> Linear ->128x7x7
  (no bias) -> BN -> LeakyReLU -> ConvT 4/2 -> BN -> LeakyReLU -> ConvT 4/2 -> sigmoid, Xavier-normal init
  (gain sqrt 2); batch 128; Adam(0.5, 0.999) over the *whole* latent table and the generator, built afresh
  every epoch, lr 0.01 for codes and 0.001 for the generator, halved every 20 epochs, 200 epochs.
* Loss: its offline option (``force_l2``), an L1 on images expanded to 3 channels, padded to 32x32 and
  scaled to [-1, 1]. Its default is the VGG perceptual loss, which needs the ImageNet weights.
* IMLE ("ICP"): mapper 32 -> 128 -> 128 -> 64, no biases, BN + ReLU; every epoch draws 2N noise vectors in
  batches of 128 (train-mode BN), matches every latent to its exact nearest output (faiss IndexFlatL2), then
  makes one pass of MSE steps (batch 128, Adam(0.5, 0.999), lr 1e-3, weight decay 1e-5, rebuilt every epoch);
  50 epochs.
* Sampling: N(0, I) noise -> mapper -> generator, both in train mode, batches of 50.

Each stage stops at its budget (mid-epoch if need be) or at the recipe's epoch count, whichever comes first.
Writes ``samples.npz`` (uint8 N x 28 x 28 x 1 under ``images``), ``samples.png`` and ``log.json``.
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from glann.config import DataConfig
from glann.data import load_dataset
from glann.images import save_grid, to_float, to_uint8
from glann.knn import faiss


class RefGenerator(nn.Module):
    def __init__(self, nz: int = 64, size: int = 28, channels: int = 1):
        super().__init__()
        r = size // 4
        self.shape = (128, r, r)
        self.lin_in = nn.Linear(nz, 1024, bias=False)
        self.lin_im = nn.Linear(1024, 128 * r * r, bias=False)
        self.bn_im = nn.BatchNorm1d(128 * r * r)
        self.conv1 = nn.ConvTranspose2d(128, 64, 4, 2, 1)
        self.bn_conv = nn.BatchNorm2d(64)
        self.conv2 = nn.ConvTranspose2d(64, channels, 4, 2, 1)
        for m in (self.lin_in, self.lin_im, self.conv1, self.conv2):
            nn.init.xavier_normal_(m.weight, gain=math.sqrt(2.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z / z.norm(dim=1, keepdim=True).detach()
        h = F.leaky_relu(self.lin_in(z), 0.2)
        h = F.leaky_relu(self.bn_im(self.lin_im(h)), 0.2).view(-1, *self.shape)
        h = F.leaky_relu(self.bn_conv(self.conv1(h)), 0.2)
        return torch.sigmoid(self.conv2(h))


class RefMapper(nn.Module):
    def __init__(self, noise_dim: int = 32, latent_dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(noise_dim, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
                                 nn.Linear(128, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
                                 nn.Linear(128, latent_dim, bias=False))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)


def ref_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    fake, real = fake.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1)
    fake, real = F.pad(fake, (2, 2, 2, 2)), F.pad(real, (2, 2, 2, 2))
    return F.l1_loss(2 * fake - 1, 2 * real - 1)


def train_glo(x: torch.Tensor, budget_s: float, dev: torch.device, epochs: int = 200, batch: int = 128):
    n = len(x)
    gen = RefGenerator(size=x.shape[-1], channels=x.shape[1]).to(dev)
    emb = nn.Embedding(n, 64).to(dev)
    nn.init.normal_(emb.weight, 0.0, 0.01)
    t0, steps, epoch, loss_sum, done = time.perf_counter(), 0, 0, 0.0, False
    bar = tqdm(desc="reference glo", unit="step", dynamic_ncols=True)
    for epoch in range(epochs):
        lr = 0.01 * 0.5 ** (epoch // 20)
        opt_g = torch.optim.Adam(gen.parameters(), lr=lr * 0.1, betas=(0.5, 0.999))
        opt_z = torch.optim.Adam(emb.parameters(), lr=lr, betas=(0.5, 0.999))
        perm = torch.randperm(n)
        loss_sum, nb = 0.0, 0
        for i in range(n // batch):
            idx = perm[i * batch:(i + 1) * batch].to(dev)
            loss = ref_loss(gen(emb(idx)), x[idx])
            opt_g.zero_grad(set_to_none=True)
            opt_z.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            opt_z.step()
            loss_sum, nb, steps = loss_sum + loss.item(), nb + 1, steps + 1
            bar.update()
            if time.perf_counter() - t0 > budget_s:
                done = True
                break
        with torch.no_grad():
            emb.weight.div_(emb.weight.norm(dim=1, keepdim=True))
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / max(nb, 1):.4f}")
        if done:
            break
    bar.close()
    dt = time.perf_counter() - t0
    return gen, emb.weight.detach(), {"glo_seconds": dt, "glo_steps": steps, "glo_epochs": steps * batch / n,
                                      "glo_images_per_s": steps * batch / dt, "glo_last_loss": loss_sum / max(nb, 1)}


def train_imle(z: torch.Tensor, budget_s: float, dev: torch.device, epochs: int = 50, batch: int = 128):
    n = len(z)
    mapper = RefMapper(latent_dim=z.shape[1]).to(dev)
    z_np = np.ascontiguousarray(z.cpu().numpy(), dtype=np.float32)
    t0, epoch, match_s = time.perf_counter(), 0, []
    for epoch in tqdm(range(epochs), desc="reference imle", unit="epoch", dynamic_ncols=True):
        opt = torch.optim.Adam(mapper.parameters(), lr=1e-3 * 0.5 ** (epoch // 50), betas=(0.5, 0.999),
                               weight_decay=1e-5)
        mapper.train()
        tm = time.perf_counter()
        with torch.no_grad():
            e = torch.randn(2 * (n // batch) * batch, 32)
            out = torch.cat([mapper(e[s:s + batch].to(dev)).cpu() for s in range(0, len(e), batch)])
        index = faiss.IndexFlatL2(z.shape[1])  # the reference's plain faiss search
        index.add(np.ascontiguousarray(out.numpy(), dtype=np.float32))
        _, nn_idx = index.search(z_np, 1)
        match_s.append(time.perf_counter() - tm)
        nn_idx = torch.from_numpy(nn_idx[:, 0])
        rp = torch.randperm(n)
        for i in range(n // batch):
            sel = rp[i * batch:(i + 1) * batch]
            loss = F.mse_loss(mapper(e[nn_idx[sel]].to(dev)), z[sel].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if time.perf_counter() - t0 > budget_s:
                break
        if time.perf_counter() - t0 > budget_s:
            break
    return mapper, {"imle_seconds": time.perf_counter() - t0, "imle_epochs": epoch + 1,
                    "imle_match_seconds_median": float(np.median(match_s))}


@torch.no_grad()
def sample(mapper: nn.Module, gen: nn.Module, num: int, dev: torch.device, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    mapper.train(), gen.train()  # as the reference samples: train-mode BN over batches of 50
    out = [gen(mapper(torch.randn(50, 32, device=dev))).cpu() for _ in range(-(-num // 50))]
    x = torch.cat(out)[:num]
    return to_uint8(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="../shared/data")
    ap.add_argument("--glo-minutes", type=float, required=True)
    ap.add_argument("--imle-minutes", type=float, required=True)
    ap.add_argument("--num-samples", type=int, default=10000)
    ap.add_argument("--out", default="outputs/reference_recipe")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dev = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(DataConfig(name="mnist", root=args.root))
    x = to_float(data.images, channels_last=False).to(dev)
    t0 = time.perf_counter()
    gen, latents, log = train_glo(x, args.glo_minutes * 60, dev)
    mapper, log_imle = train_imle(latents, args.imle_minutes * 60, dev)
    log.update(log_imle, total_seconds=time.perf_counter() - t0, device=str(dev), torch=torch.__version__)
    images = sample(mapper, gen, args.num_samples, dev, args.seed)
    np.savez_compressed(out / "samples.npz", images=images)
    save_grid(to_float(images[:100]), out / "samples.png")
    (out / "log.json").write_text(json.dumps(log, indent=2))
    print(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
