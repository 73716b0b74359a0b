import torch

from glann.toy import mixture_centers, mode_metrics, sample_mixture


def test_mode_metrics_on_known_sets():
    data = sample_mixture("ring", 4000)
    m = mode_metrics(data, "ring")
    # In 2-D, a Gaussian puts 1 - exp(-4.5) = 98.9% of its mass within 3 standard deviations.
    assert m["modes"] == 8 and m["modes_covered"] == 8 and 98.0 < m["high_quality_pct"] < 99.7
    collapsed = mixture_centers("ring")[:1].repeat(500, 1)
    m = mode_metrics(collapsed, "ring")
    assert m["modes_covered"] == 1 and m["high_quality_pct"] == 100.0
    m = mode_metrics(torch.zeros(100, 2), "grid")  # all at the centre mode of the 5x5 grid
    assert m == {"modes": 25, "modes_covered": 1, "high_quality_pct": 100.0}
    assert mode_metrics(sample_mixture("grid", 5000), "grid")["modes_covered"] == 25


def test_data_recall_counts_data_points_with_a_close_sample():
    data = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])  # two ring modes
    samples = torch.tensor([[2.01, 0.0]] * 30)       # all samples on the first one
    m = mode_metrics(samples, "ring", data=data)
    assert m["data_recall_pct"] == 50.0 and m["modes_covered"] == 1 and m["high_quality_pct"] == 100.0
