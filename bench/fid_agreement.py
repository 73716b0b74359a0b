"""Does glann's FID agree with torch-fidelity's own computation on the same images and weights?

    python bench/fid_agreement.py --sampler <run>/sampler --mnist-root ../shared/data \
        --weights ../shared/models/inception-2015-12-05-fid-weights-no-classifier.pth --num 1000

Computes FID(samples, random MNIST test images) twice: with glann.metrics (features + Frechet distance) and
with torch_fidelity.calculate_metrics, each extracting its own features. Prints both and the relative gap.
"""
import argparse
import time

import numpy as np
import torch

from glann.config import DataConfig
from glann.data import load_dataset
from glann.metrics import InceptionFeatures, fid_from_features
from glann.sampler import GlannSampler


class Uint8Images(torch.utils.data.Dataset):
    def __init__(self, nchw: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(nchw))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sampler", required=True)
    ap.add_argument("--mnist-root", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--num", type=int, default=1000)
    args = ap.parse_args()
    samples = GlannSampler.from_pretrained(args.sampler)(args.num, seed=0).images.transpose(0, 3, 1, 2)
    test = load_dataset(DataConfig(name="mnist", root=args.mnist_root, split="test", limit=args.num), seed=0).images
    t0 = time.perf_counter()
    ext = InceptionFeatures(args.weights)
    ours = fid_from_features(ext(samples), ext(test))
    t_ours = time.perf_counter() - t0
    import torch_fidelity

    t0 = time.perf_counter()
    theirs = torch_fidelity.calculate_metrics(input1=Uint8Images(samples), input2=Uint8Images(test), fid=True,
                                              cuda=False, batch_size=50, verbose=False, save_cpu_ram=True,
                                              feature_extractor="inception-v3-compat",
                                              feature_extractor_weights_path=args.weights)
    t_theirs = time.perf_counter() - t0
    fid_tf = theirs["frechet_inception_distance"]
    print("| N | glann FID | torch-fidelity FID | relative gap | glann s | torch-fidelity s |\n"
          "|---|---|---|---|---|---|\n"
          f"| {args.num} | {ours:.3f} | {fid_tf:.3f} | {100 * abs(ours - fid_tf) / fid_tf:.3f}% | {t_ours:.0f} | "
          f"{t_theirs:.0f} |")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
