"""The drill's container images, built here from the distribution's packages: no registry.

An engine whose distribution package exists gives an :class:`ImageRecipe` through its Docker
profile (``quiesce_<engine>.image``): the Debian packages, the mmdebstrap hooks, an entrypoint
and a Dockerfile snippet. :func:`build_image` then

1. builds (or finds in the cache) a minbase root filesystem with those packages
   (:func:`quiesce.harness.rootfs.ensure_rootfs`, from the host's own apt sources),
2. ``docker import``\\ s it as ``quiesce-drill/<engine>-base:<rootfs key>``,
3. builds the snippet on top as ``quiesce-drill/<engine>:key-<key>`` (``key``: a hash of the
   rootfs key, the Dockerfile and the files), labelled with :data:`LABEL_KEY`, and tags it
   with the packaged version too (``quiesce-drill/postgresql:15``).

Each step is skipped when its result exists: the same inputs never build twice. The Docker
backend uses ``quiesce-drill/<engine>:key-<key>`` by default when it exists
(:func:`resolve_image`); any other image (``--image postgres:16``) works as well, since the
images built here follow the official images' conventions (``POSTGRES_PASSWORD``, ``PGDATA``,
``POSTGRES_INITDB_WALDIR``, ``MARIADB_ROOT_PASSWORD``, uid 999, arguments passed to the
server).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quiesce.errors import EngineUnavailable, HarnessError
from quiesce.harness.rootfs import RootfsError, ensure_rootfs, make_spec

IMAGE_REPOSITORY = "quiesce-drill"
LABEL_KEY = "io.quiesce.image.key"
LABEL_ENGINE = "io.quiesce.image.engine"
#: Bumped when the build steps change, so images of an older build are not reused.
FORMAT = 1

Progress = Callable[[str], None]


class ImageBuildError(HarnessError):
    """An image could not be built."""


class ImageUnavailable(EngineUnavailable):
    """No image for an engine is here, and none can be pulled."""


@dataclass(frozen=True)
class ImageRecipe:
    """How to build one engine's image from the distribution's packages."""

    engine: str
    packages: tuple[str, ...]
    #: Dockerfile lines after ``FROM <the imported rootfs>``
    dockerfile: str
    #: (name, text) files of the build context, written with mode 0755 (entrypoints)
    files: tuple[tuple[str, str], ...] = ()
    #: mmdebstrap hooks (kind, shell command), e.g. the service user with uid 999 first
    hooks: tuple[tuple[str, str], ...] = ()
    #: the package whose version tags the image, and how many of its dotted parts to keep
    version_package: str = ""
    version_parts: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    def short_version(self, full: str) -> str:
        """``1:10.11.14-0+deb12u1`` -> ``10.11`` (2 parts); ``15+248`` -> ``15``."""
        upstream = full.split(":", 1)[-1]
        upstream = re.split(r"[-+~]", upstream, maxsplit=1)[0]
        return ".".join(upstream.split(".")[: self.version_parts]) or "unknown"


@dataclass
class BuiltImage:
    engine: str
    name: str  # quiesce-drill/<engine>:key-<key>
    tags: list[str]
    version: str
    cached: bool
    seconds: float


def default_cache_dir() -> Path:
    """``QUIESCE_IMAGE_CACHE``, else /var/cache/quiesce/images as root, else
    ~/.cache/quiesce/images."""
    env = os.environ.get("QUIESCE_IMAGE_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/quiesce/images")
    return Path.home() / ".cache" / "quiesce" / "images"


def repository(engine: str) -> str:
    return f"{IMAGE_REPOSITORY}/{engine}"


def image_key(recipe: ImageRecipe, rootfs_key: str) -> str:
    doc = {"format": FORMAT, "rootfs": rootfs_key, "dockerfile": recipe.dockerfile,
           "files": [list(f) for f in recipe.files], "labels": recipe.labels,
           "version_package": recipe.version_package}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def keys_for(recipe: ImageRecipe) -> tuple[str, str]:
    """(rootfs key, image key) for the recipe on this host (its apt sources and release)."""
    spec = make_spec(recipe.packages, hooks=recipe.hooks)
    return spec.key, image_key(recipe, spec.key)


def built_image_name(engine: str) -> str | None:
    """``quiesce-drill/<engine>:key-<key>`` for the current inputs; None when the engine has no
    recipe. Raises RootfsError when the inputs cannot be read (no apt sources)."""
    from quiesce.harness.servers.docker import docker_profile

    recipe = docker_profile(engine).recipe()
    if recipe is None:
        return None
    return f"{repository(engine)}:key-{keys_for(recipe)[1]}"


def build_command(engine: str) -> str:
    return f"quiesce images build --engine {engine}"


def _image_exists(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


# Pull attempts that failed in this process: never retried (a registry that did not answer
# for one server will not for the next; the drill starts several).
_failed_pulls: dict[str, str] = {}


def _pull(client: Any, name: str) -> str:
    """"" when ``name`` was pulled, else the one-line reason it could not be."""
    if name in _failed_pulls:
        return _failed_pulls[name]
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        repo, tag = name, "latest"
    try:
        client.images.pull(repo, tag=tag)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        _failed_pulls[name] = reason
        return reason
    return ""


def resolve_image(engine: str, requested: str | None = None, *, pull: bool = True,
                  client: Any = None) -> str:
    """The image to run ``engine`` from, present in the engine (pulled if it must be).

    ``requested`` (``--image``, or ``QUIESCE_<ENGINE>_IMAGE``) is used as given. Otherwise the
    image built here for the current inputs, else the official image when present or
    pullable. Raises :class:`ImageUnavailable`, one line naming how to build or pull one.
    """
    from quiesce.harness.servers.docker import docker_client, docker_profile

    requested = requested or os.environ.get(f"QUIESCE_{engine.upper()}_IMAGE") or None
    close = client is None
    client = client or docker_client()
    try:
        if requested:
            if _image_exists(client, requested):
                return requested
            why = _pull(client, requested) if pull else "pulling is off"
            if not why:
                return requested
            raise ImageUnavailable(
                f"image {requested} is not in the Docker engine and cannot be pulled ({why})",
                hint="load it (docker load) or pull it where a registry answers"
                     + (f", or build quiesce's own: {build_command(engine)}"
                        if docker_profile(engine).recipe() else ""))
        profile = docker_profile(engine)
        try:
            built = built_image_name(engine)
        except RootfsError as exc:
            built, built_why = None, str(exc)
        else:
            built_why = ""
        if built and _image_exists(client, built):
            return built
        official = profile.official_image
        if official and _image_exists(client, official):
            return official
        why = _pull(client, official) if official and pull else "pulling is off"
        if official and not why:
            return official
        if built:
            raise ImageUnavailable(
                f"no {engine} image: {built} is not built and {official} cannot be pulled "
                f"({why})",
                hint=f"build it with: {build_command(engine)} (or docker pull {official} where "
                     "a registry answers)")
        raise ImageUnavailable(
            f"no {engine} image: {official} is not in the Docker engine and cannot be pulled "
            f"({why})" + (f"; {built_why}" if built_why else ""),
            hint=f"load or pull {official} (or another {engine} image, with --image or "
                 f"QUIESCE_{engine.upper()}_IMAGE); the distribution packages no {engine} "
                 "server to build one from")
    finally:
        if close:
            client.close()


def _stream_build(client: Any, context: Path, tag: str, labels: dict[str, str],
                  progress: Progress) -> None:
    """docker build (no pull: the base is the imported rootfs), failing with its output."""
    lines: list[str] = []
    error = ""
    for chunk in client.api.build(path=str(context), tag=tag, labels=labels, rm=True,
                                  forcerm=True, pull=False, decode=True):
        if "stream" in chunk:
            text = chunk["stream"].rstrip()
            if text:
                lines.append(text)
                if text.startswith("Step "):
                    progress(f"  {text}")
        if "error" in chunk:
            error = chunk["error"].strip()
    if error:
        tail = "\n".join(lines[-15:])
        raise ImageBuildError(f"docker build of {tag} failed: {error}\n{tail}",
                              hint="see the Dockerfile snippet of the engine's image recipe")


def build_image(recipe: ImageRecipe, *, cache_dir: Path | None = None,
                progress: Progress = print, rebuild: bool = False,
                client: Any = None) -> BuiltImage:
    """Build (or find) the image of ``recipe``; see the module's docstring for the steps."""
    import docker.errors

    from quiesce.harness.servers.docker import docker_client

    started = time.monotonic()
    cache_dir = cache_dir or default_cache_dir()
    spec = make_spec(recipe.packages, hooks=recipe.hooks)
    key = image_key(recipe, spec.key)
    repo = repository(recipe.engine)
    name = f"{repo}:key-{key}"
    close = client is None
    client = client or docker_client(timeout=600)
    try:
        if not rebuild and _image_exists(client, name):
            tags = sorted(client.images.get(name).tags)
            progress(f"{recipe.engine}: {name} is up to date ({', '.join(tags)})")
            version = next((t.rpartition(":")[2] for t in tags if ":key-" not in t), "")
            return BuiltImage(recipe.engine, name, tags, version, True,
                              time.monotonic() - started)
        base = f"{repo}-base:{spec.key}"
        if rebuild or not _image_exists(client, base):
            tarball = ensure_rootfs(recipe.packages, cache_dir / "rootfs", hooks=recipe.hooks,
                                    progress=lambda line: progress(f"{recipe.engine}: {line}"),
                                    rebuild=rebuild)
            progress(f"{recipe.engine}: docker import {tarball.name} as {base}")
            with open(tarball, "rb") as fh:
                client.api.import_image_from_data(fh, repository=f"{repo}-base", tag=spec.key)
        context = Path(tempfile.mkdtemp(prefix=f"quiesce-image-{recipe.engine}-"))
        try:
            for file_name, text in recipe.files:
                path = context / file_name
                path.write_text(text, encoding="utf-8")
                path.chmod(0o755)
            (context / "Dockerfile").write_text(f"FROM {base}\n{recipe.dockerfile}\n",
                                                encoding="utf-8")
            labels = {LABEL_KEY: key, LABEL_ENGINE: recipe.engine, **recipe.labels}
            progress(f"{recipe.engine}: docker build {name}")
            _stream_build(client, context, name, labels, progress)
        finally:
            shutil.rmtree(context, ignore_errors=True)
        version = _package_version(client, name, recipe.version_package)
        tags = [name]
        if version:
            short = recipe.short_version(version)
            client.images.get(name).tag(repo, tag=short)
            tags.append(f"{repo}:{short}")
        seconds = time.monotonic() - started
        progress(f"{recipe.engine}: built {', '.join(tags)}"
                 + (f" ({recipe.version_package} {version})" if version else "")
                 + f" in {seconds:.0f}s")
        return BuiltImage(recipe.engine, name, tags, version, False, seconds)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"Docker refused a step of the {recipe.engine} image build: "
                              f"{exc}", hint="check that the Docker engine runs") from exc
    finally:
        if close:
            client.close()


def _package_version(client: Any, image: str, package: str) -> str:
    """The installed version of ``package`` in ``image`` (a short-lived, labelled container)."""
    if not package:
        return ""
    container = client.containers.create(
        image, entrypoint=["dpkg-query", "-W", "-f", "${Version}", package], command=[],
        network_disabled=True, labels={"io.quiesce.image.probe": "1"})
    try:
        container.start()
        status = container.wait(timeout=120)
        out = container.logs(stdout=True, stderr=False).decode().strip()
    finally:
        container.remove(force=True)
    if status.get("StatusCode") != 0:
        raise ImageBuildError(f"{image} has no package {package} (dpkg-query exit "
                              f"{status.get('StatusCode')})",
                              hint="fix version_package in the engine's image recipe")
    return str(out)


def recipes_for(engines: Sequence[str]) -> list[ImageRecipe]:
    """The recipes of ``engines``; an engine without one raises ImageBuildError naming it."""
    from quiesce.harness.servers.docker import docker_profile

    recipes = []
    for engine in engines:
        profile = docker_profile(engine)
        recipe = profile.recipe()
        if recipe is None:
            raise ImageBuildError(
                f"{engine}: the distribution packages no {engine} server, so quiesce cannot "
                f"build its image here",
                hint=f"use an official image (--image, or docker pull {profile.official_image})")
        recipes.append(recipe)
    return recipes


def buildable_engines() -> list[str]:
    """The drill targets whose engine has an image recipe."""
    from quiesce.harness.drill.targets import drill_targets
    from quiesce.harness.servers.docker import docker_profile

    found = []
    for name in drill_targets().names():
        try:
            if docker_profile(name).recipe() is not None:
                found.append(name)
        except HarnessError:
            continue
    return found
