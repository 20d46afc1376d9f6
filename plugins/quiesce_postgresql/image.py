"""PostgreSQL on the Docker backend: the container plan, the readiness probe, and the recipe of
the image ``quiesce images build --engine postgresql`` makes from the distribution's packages.

The image built here behaves like the official ``postgres`` images where the drill relies on
it: ``POSTGRES_PASSWORD``, ``PGDATA``, ``POSTGRES_INITDB_WALDIR``, the ``postgres`` user with
uid 999, arguments appended to ``postgres``, password (scram) authentication over TCP, and
SIGINT (a fast shutdown) as the stop signal. Harness side only: production code never imports
this module.
"""

from __future__ import annotations

from quiesce.harness.images import ImageRecipe
from quiesce.harness.servers.base import ConnectionInfo, ServerLayout
from quiesce.harness.servers.docker import DATA_MOUNT, LOG_MOUNT, ContainerPlan, DockerProfile

# Runs as root first: makes and hands over the two disks' directories, then re-executes itself
# as postgres (setpriv, from util-linux, is in every Debian base system).
ENTRYPOINT = r"""#!/bin/sh
set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
PATH="$BIN:$PATH"
export PATH
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        chown postgres:postgres "$POSTGRES_INITDB_WALDIR"
        chmod 700 "$POSTGRES_INITDB_WALDIR"
        find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres {} +
    fi
    # A copy restored by root is root's: hand every file back, as the official image does.
    find "$PGDATA" \! -user postgres -exec chown -h postgres:postgres {} +
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" -E UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256 --waldir "$POSTGRES_INITDB_WALDIR"
    else
        initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" -E UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256
    fi
    rm -f "$pwfile"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    echo "quiesce-image: database initialised in $PGDATA"
fi
if [ "$1" = postgres ]; then
    shift
    set -- postgres -c listen_addresses='*' "$@"
fi
exec "$@"
"""

DOCKERFILE = """\
COPY entrypoint.sh /usr/local/bin/quiesce-entrypoint
ENV LANG=C.UTF-8
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/quiesce-entrypoint"]
CMD ["postgres"]
"""

# The postgres user and group get uid/gid 999 (as in the official images) before the packages'
# maintainer scripts create them, so every file they own is 999's.
USER_HOOK = ('echo "postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash" '
             '>>"$1/etc/passwd" && echo "postgres:x:999:" >>"$1/etc/group"')
# No cluster in the image: the data directory is the drill's disk.
CLEAN_HOOK = ('rm -rf "$1"/etc/postgresql/*/main "$1"/var/lib/postgresql/*/main '
              '"$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin')


class PostgresProfile(DockerProfile):
    engine = "postgresql"
    port = 5432
    official_image = "postgres:17"
    repositories = ("postgres", "postgresql")

    def plan(self, layout: ServerLayout, *, image: str | None, password: str,
             replset: str | None) -> ContainerPlan:
        plan = super().plan(layout, image=image, password=password, replset=replset)
        plan.user, plan.database = "postgres", "postgres"
        plan.env = {"POSTGRES_PASSWORD": password, "PGDATA": f"{DATA_MOUNT}/pgdata"}
        if layout.log_dir is not None:
            plan.env["POSTGRES_INITDB_WALDIR"] = f"{LOG_MOUNT}/pg_wal"
        return plan

    def probe(self, info: ConnectionInfo) -> str:
        import psycopg

        with psycopg.connect(host=info.host, port=info.port, user=info.user,
                             password=info.password, dbname=info.database or "postgres",
                             connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else ""

    def recipe(self) -> ImageRecipe:
        return ImageRecipe(
            engine=self.engine,
            packages=("postgresql",),
            dockerfile=DOCKERFILE,
            files=(("entrypoint.sh", ENTRYPOINT),),
            hooks=(("essential", USER_HOOK), ("customize", CLEAN_HOOK)),
            version_package="postgresql",
            version_parts=1,
        )


def profile(name: str) -> PostgresProfile:
    return PostgresProfile(name)
