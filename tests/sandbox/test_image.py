"""The image recipe: content-hashed tags, rebuilt only when the recipe changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import docker
import pytest

from sandbox import SandboxPool, image


def test_tag_follows_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "image"
    shutil.copytree(image.RECIPE_DIR, recipe)
    monkeypatch.setattr(image, "RECIPE_DIR", recipe)
    before = image.recipe_hash()
    assert image.recipe_hash() == before  # stable
    (recipe / "supervisor.py").write_text((recipe / "supervisor.py").read_text() + "\n# changed\n")
    assert image.recipe_hash() != before
    assert image.image_tag() == f"spo-gym-sandbox:{image.recipe_hash()}"


@pytest.mark.docker
def test_current_recipe_is_built_and_not_rebuilt(docker_client: docker.DockerClient) -> None:
    lines: list[str] = []
    tag = image.ensure_image(docker_client, log=lines.append)
    assert tag == image.image_tag()
    assert lines == [f"sandbox image {tag} is up to date"]
    labels = docker_client.images.get(tag).labels
    assert labels.get("spo-gym.recipe") == image.recipe_hash()


@pytest.mark.docker
async def test_the_readme_states_what_the_image_contains(pool: SandboxPool) -> None:
    async with pool.session("versions") as s:
        r = await s.run(
            "import sys, numpy, sympy\n"
            "print(f'Python {sys.version.split()[0]}, numpy {numpy.__version__}, "
            "sympy {sympy.__version__}')"
        )
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert r.stdout.strip() in readme, r.stdout
