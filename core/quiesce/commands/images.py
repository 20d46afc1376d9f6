"""``quiesce images``: the drill's container images, built here from the distribution's packages.

    quiesce images build [--engine ENGINE ...] [--rebuild] [--cache-dir DIR]
    quiesce images list

``build`` makes ``quiesce-drill/<engine>:<version>`` (and ``:key-<hash of its inputs>``) for
each engine (default: every engine the distribution packages: PostgreSQL, MariaDB) with
mmdebstrap and ``docker import``, no registry needed; an image whose inputs did not change is
not built again. ``list`` shows those images and any drill container a dead process left.
A harness command: production commands never import it.

Exit 0 done, 2 bad usage, 3 no Docker engine answers or a build step cannot run here (root,
mmdebstrap, apt), with one line naming the fix.
"""

from __future__ import annotations

import argparse
import sys

EXIT_UNAVAILABLE = 3


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="images_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="build the drill's images from distribution packages")
    build.add_argument("--engine", action="append", default=None,
                       help="an engine to build (repeatable; default: every buildable one)")
    build.add_argument("--rebuild", action="store_true",
                       help="build again even when the inputs did not change")
    build.add_argument("--cache-dir", default=None,
                       help="where root filesystem tarballs are cached (default "
                            "/var/cache/quiesce/images as root; QUIESCE_IMAGE_CACHE)")
    sub.add_parser("list", help="the images built here and leftover drill containers")


def _say(line: str) -> None:
    print(f"images: {line}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from quiesce.errors import QuiesceError
    from quiesce.harness.drill.targets.docker import docker_status

    ok, reason = docker_status()
    if not ok:
        print(f"quiesce images: {reason}; start a Docker engine (docker/test-engine.sh start "
              "starts a private one as root)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        if args.images_command == "list":
            return _list()
        from quiesce.harness.images import build_image, buildable_engines, recipes_for

        engines = args.engine or buildable_engines()
        recipes = recipes_for(engines)
        cache = Path(args.cache_dir) if args.cache_dir else None
        for recipe in recipes:
            built = build_image(recipe, cache_dir=cache, progress=_say, rebuild=args.rebuild)
            print(" ".join(built.tags))
    except QuiesceError as exc:
        line = f"quiesce images: {exc}" + (f"; {exc.hint}" if exc.hint else "")
        first, *rest = line.splitlines()
        print(first + (f" ({rest[-1].strip()})" if rest else ""), file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


def _list() -> int:
    from quiesce.harness.images import IMAGE_REPOSITORY, LABEL_ENGINE
    from quiesce.harness.servers.docker import LABEL, docker_client, leftover_containers

    client = docker_client()
    try:
        for image in client.images.list(filters={"label": LABEL_ENGINE}):
            tags = [t for t in image.tags if t.startswith(IMAGE_REPOSITORY + "/")]
            print(f"{image.labels.get(LABEL_ENGINE, '?'):12} {' '.join(sorted(tags))}")
        left = leftover_containers(client)
        for container in left:
            print(f"leftover container {container.name} ({container.status}); remove with: "
                  f"docker rm -f {container.name}")
        if not left:
            _say(f"no leftover drill container (label {LABEL})")
    finally:
        client.close()
    return 0
