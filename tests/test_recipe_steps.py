"""The guard on what the shipped recipes' training computes: their first steps on generated
data (batch order, targets, masks, random state, loss, gradient norm, learning rate) agree
with the steps pinned in tests/recipe_steps/ (benchmarks/recipe_steps.py). A change that
moves them without anyone meaning it fails here; one that is meant pins new steps with
``--write`` in the same commit (docs/development.md)."""

import importlib.util
import json

import pytest

from timit_lit.synthetic import write_synthetic_timit

from helpers import REPO

PINNED = REPO / "tests" / "recipe_steps"
RECIPES = ["recurrent", "strong_mlp", "baseline"]
# The steps run without validation, so the best-val/acc checkpoint has nothing to watch.
pytestmark = pytest.mark.filterwarnings("ignore:.*could not find the monitored key")


@pytest.fixture(scope="module")
def recipe_steps():
    """benchmarks/recipe_steps.py, imported (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("recipe_steps", REPO / "benchmarks" / "recipe_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory):
    """40 generated utterances: the recurrent recipe's fourth step is its second epoch's first."""
    out = tmp_path_factory.mktemp("recipe_steps_data")
    write_synthetic_timit(out, train_utterances=40, test_utterances=5, seed=3)
    return out


def check(recipe_steps, recipe, data, workdir, *extra):
    return recipe_steps.main(["--config", str(REPO / "configs" / f"{recipe}.yaml"), "--data", str(data), "--steps", "4",
                              "--workdir", str(workdir), "--check", str(PINNED / f"{recipe}.json"), *extra])


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipes_first_steps_compute_what_they_did(recipe, recipe_steps, recipe_data, tmp_path, capsys):
    status = check(recipe_steps, recipe, recipe_data, tmp_path)
    out = capsys.readouterr().out
    assert status == 0, out[-3000:]
    assert "the 4 steps agree with" in out


def test_the_guard_names_what_moved(recipe_steps, recipe_data, tmp_path, capsys):
    """Another seed (another batch order and random state) and another learning rate (the
    same batches, another optimisation) each fail the check, named by the values they move."""
    assert check(recipe_steps, "strong_mlp", recipe_data, tmp_path / "seed", "--seed_everything", "1") == 1
    reseeded = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert any(line.startswith("step 0: inputs is") for line in reseeded), reseeded
    assert check(recipe_steps, "strong_mlp", recipe_data, tmp_path / "lr", "--model.lr", "0.02") == 1
    faster = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert "step 0: lr is" in faster[0] and any(line.startswith("step 1: loss is") for line in faster), faster
    assert not any(" inputs is" in line or " rng is" in line or " targets is" in line for line in faster), faster


def test_pinned_steps_cover_the_recipes():
    for recipe in RECIPES:
        steps = json.loads((PINNED / f"{recipe}.json").read_text())
        assert [step["step"] for step in steps] == [0, 1, 2, 3]
    assert "masked_inputs" in json.loads((PINNED / "recurrent.json").read_text())[0]  # the recurrent recipe's masks
