from pathlib import Path

import pytest
from conftest import compose_train

from glann.cli import config_dir
from glann.errors import ConfigError

CONF = Path(config_dir())


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_train(f"experiment={experiment}")
    assert cfg.glo.latent_dim > 0


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_every_data_option_composes(data):
    extra = ["data.root=/tmp"] if data == "folder" else []
    cfg = compose_train(f"data={data}", *extra)
    assert cfg.data.name == data


def test_default_config_is_the_offline_embedded_job():
    cfg = compose_train()
    assert cfg.data.name == "embedded" and cfg.loss.name == "lap1"
    assert (cfg.glo.lr_generator, cfg.glo.lr_latent, cfg.glo.beta1) == (1e-3, 1e-2, 0.5)


@pytest.mark.parametrize("override,key", [
    ("glo.lr_generator=-1", "glo.lr_generator"), ("glo.batch_size=0", "glo.batch_size"),
    ("glo.epochs=0", "glo.epochs"), ("imle.lr=0", "imle.lr"), ("imle.rounds=-2", "imle.rounds"),
    ("data.image_size=30", "data.image_size"), ("loss.name=l2", "loss.name"), ("stages=[glo,gan]", "stages"),
    ("imle.lr_decay_every=-1", "imle.lr_decay_every"), ("imle.lr_decay=0", "imle.lr_decay"),
    ("glo.latent_noise=-0.1", "glo.latent_noise"), ("glo.latent_noise=nan", "glo.latent_noise"),
    ("imle.ema=1.0", "imle.ema"), ("imle.ema=-0.5", "imle.ema"), ("imle.ema=nan", "imle.ema"),
])
def test_validate_names_the_offending_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_train("debug=tiny", override)


def test_unknown_key_and_wrong_type_fail_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="learning_rate"):
        compose_train("glo.learning_rate=0.1")
    with pytest.raises(ConfigCompositionException, match="glo.epochs"):
        compose_train("glo.epochs=many")
