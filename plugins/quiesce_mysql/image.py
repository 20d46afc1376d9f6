"""MySQL and MariaDB on the Docker backend: the container plan, the readiness probe, and the
recipe of the MariaDB image ``quiesce images build --engine mariadb`` makes from the
distribution's packages (Debian packages MariaDB, not MySQL: ``mysql`` runs only from an
official ``mysql`` image).

The image built here behaves like the official ``mariadb`` images where the drill relies on it:
``MARIADB_ROOT_PASSWORD`` (or ``MYSQL_ROOT_PASSWORD``) for ``root`` from any host, the ``mysql``
user with uid 999, arguments starting with ``-`` appended to ``mariadbd`` (``--datadir``,
``--innodb-log-group-home-dir``: directories it creates and hands to ``mysql`` first), a data
directory initialised only when it holds no ``mysql`` schema. It prints "ready for connections"
once (the official image's temporary server prints it twice: testcontainers' MySqlContainer
waits for the second); readiness here is a real connection, not a log line. Harness side only.
"""

from __future__ import annotations

from pathlib import Path

from quiesce.harness.images import ImageRecipe
from quiesce.harness.servers.base import ConnectionInfo, ServerLayout
from quiesce.harness.servers.docker import DATA_MOUNT, LOG_MOUNT, ContainerPlan, DockerProfile

ENTRYPOINT = r"""#!/bin/sh
set -eu
if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- mariadbd "$@"
fi
datadir=/var/lib/mysql
logdir=""
for arg in "$@"; do
    case "$arg" in
        --datadir=*) datadir=${arg#--datadir=} ;;
        --innodb-log-group-home-dir=*|--innodb_log_group_home_dir=*) logdir=${arg#*=} ;;
    esac
done
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$datadir" /run/mysqld
    chown mysql:mysql "$datadir" /run/mysqld
    if [ -n "$logdir" ]; then
        mkdir -p "$logdir"
        chown mysql:mysql "$logdir"
        find "$logdir" \! -user mysql -exec chown mysql:mysql {} +
    fi
    # A copy restored by root is root's: hand every file back, as the official image does.
    find "$datadir" \! -user mysql -exec chown -h mysql:mysql {} +
    exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
fi
if [ "$1" = mariadbd ]; then
    shift
    if [ ! -d "$datadir/mysql" ]; then
        password=${MARIADB_ROOT_PASSWORD:-${MYSQL_ROOT_PASSWORD:-}}
        if [ -z "$password" ]; then
            echo "quiesce-image: MARIADB_ROOT_PASSWORD must be set" >&2
            exit 1
        fi
        mariadb-install-db --datadir="$datadir" --auth-root-authentication-method=normal \
            --skip-test-db --skip-name-resolve "$@" >/dev/null
        quoted=$(printf '%s' "$password" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")
        init=/run/mysqld/quiesce-init.sql
        umask 077
        cat >"$init" <<SQL
ALTER USER 'root'@'localhost' IDENTIFIED BY '$quoted';
CREATE USER 'root'@'%' IDENTIFIED BY '$quoted';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
SQL
        echo "quiesce-image: database initialised in $datadir"
        set -- --init-file="$init" "$@"
    fi
    set -- mariadbd --bind-address=0.0.0.0 --skip-name-resolve "$@"
fi
exec "$@"
"""

DOCKERFILE = """\
COPY entrypoint.sh /usr/local/bin/quiesce-entrypoint
ENV LANG=C.UTF-8
EXPOSE 3306
ENTRYPOINT ["/usr/local/bin/quiesce-entrypoint"]
CMD ["mariadbd"]
"""

USER_HOOK = ('echo "mysql:x:999:999:MySQL Server:/nonexistent:/bin/false" >>"$1/etc/passwd" '
             '&& echo "mysql:x:999:" >>"$1/etc/group"')
# No data directory in the image (the drill's disk holds it), no apt lists.
CLEAN_HOOK = 'rm -rf "$1"/var/lib/mysql/* "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'


class MySQLProfile(DockerProfile):
    port = 3306
    repositories = ("mysql",)
    official_image = "mysql:8.4"
    password_env = "MYSQL_ROOT_PASSWORD"  # noqa: S105 - a variable name

    def plan(self, layout: ServerLayout, *, image: str | None, password: str,
             replset: str | None) -> ContainerPlan:
        plan = super().plan(layout, image=image, password=password, replset=replset)
        plan.user, plan.database = "root", ""
        plan.env = {self.password_env: password}
        plan.command = [f"--datadir={DATA_MOUNT}/mysql"]
        plan.host_dirs.append(Path(layout.data_dir) / "mysql")
        if layout.log_dir is not None:
            # mysqld does not create innodb_log_group_home_dir: it must exist, owned by mysql.
            plan.command.append(f"--innodb-log-group-home-dir={LOG_MOUNT}/redo")
            plan.host_dirs.append(Path(layout.log_dir) / "redo")
        return plan

    def probe(self, info: ConnectionInfo) -> str:
        import pymysql

        conn = pymysql.connect(host=info.host, port=info.port, user=info.user,
                               password=info.password, connect_timeout=3, read_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                row = cur.fetchone()
                return str(row[0]) if row else ""
        finally:
            conn.close()


class MariaDBProfile(MySQLProfile):
    repositories = ("mariadb",)
    official_image = "mariadb:11"
    password_env = "MARIADB_ROOT_PASSWORD"  # noqa: S105 - a variable name

    def recipe(self) -> ImageRecipe:
        return ImageRecipe(
            engine=self.engine,
            packages=("mariadb-server",),
            dockerfile=DOCKERFILE,
            files=(("entrypoint.sh", ENTRYPOINT),),
            hooks=(("essential", USER_HOOK), ("customize", CLEAN_HOOK)),
            version_package="mariadb-server",
            version_parts=2,
        )


def profile(name: str) -> MySQLProfile:
    """``mysql`` or ``mariadb``."""
    return MariaDBProfile(name) if name == "mariadb" else MySQLProfile(name)
