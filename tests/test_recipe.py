"""The recipe that trains the four modules in order."""

import pytest

from jaxface import recipe


def test_commands_train_every_module_then_write_the_bundle():
  cmds = recipe.commands("prepared:data/x", "runs/r", "lite",
                         extra=["all=--config.train.num_steps=5",
                                "inpaint_male=--config.seed=3"])
  assert len(cmds) == len(recipe.MODULES) + 1
  first = " ".join(cmds[0])
  assert "--config=configs/gender.py:lite" in first
  assert "--config.data.source=prepared:data/x" in first
  assert "--workdir=runs/r/gender" in first
  male = " ".join(cmds[4])
  assert "lite,gender=male" in male and "--config.seed=3" in male
  assert all("--config.train.num_steps=5" in " ".join(c) for c in cmds[:-1])
  bundle = " ".join(cmds[-1])
  assert "jaxface.weights.bundle" in bundle
  assert "--inpaint_all=runs/r/inpaint_all" in bundle


def test_tiny_ignores_data_and_only_selects():
  cmds = recipe.commands("", "w", "tiny", modules=["segment"])
  assert len(cmds) == 2
  assert "segment.py:tiny,model=unet" in " ".join(cmds[0])
  assert not any("data.source" in c for c in cmds[0])


def test_bad_arguments_are_named(capsys):
  with pytest.raises(ValueError, match="MODULE=FLAG"):
    recipe.commands("d", "w", extra=["nonsense"])
  with pytest.raises(ValueError, match="--only"):
    recipe.commands("d", "w", modules=["gendr"])
  with pytest.raises(SystemExit):
    recipe.main(["--workdir=w"])
  assert "--data is needed" in capsys.readouterr().err
