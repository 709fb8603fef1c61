#!/usr/bin/env bash
# Throwaway MariaDB (or MySQL) servers for Ferry's tests, demo scripts and benchmarks.
#
#   scripts/mysql.sh start NAME PORT [--option=value ...]   initialise (if new) and start a server
#   scripts/mysql.sh stop NAME                               stop it
#   scripts/mysql.sh destroy NAME                            stop it and remove its directory
#   scripts/mysql.sh url NAME                                print its root URL
#
# Servers live under $FERRY_CLUSTER_DIR (default: <repo>/.ferry-test/clusters), next to the
# PostgreSQL clusters of scripts/pg.sh, listen on 127.0.0.1 only (no socket outside their
# directory), and have a root user reachable over TCP with password $FERRY_MY_PASSWORD
# (default "ferry-test-pw"). Extra options go to mariadbd as given, for example
#   --log-bin=binlog --binlog-format=ROW --binlog-row-image=FULL --server-id=1
# As root the server runs as the "mysql" system user (Debian's package creates it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${FERRY_CLUSTER_DIR:-$here/.ferry-test/clusters}
PASSWORD=${FERRY_MY_PASSWORD:-ferry-test-pw}
MYSQLD=${FERRY_MYSQLD:-$(command -v mariadbd || echo /usr/sbin/mariadbd)}
INSTALL_DB=${FERRY_MYSQL_INSTALL_DB:-$(command -v mariadb-install-db || echo /usr/bin/mariadb-install-db)}
CLIENT=$(command -v mariadb || command -v mysql || echo mariadb)

run_user=$(id -un)
[ "$(id -u)" = 0 ] && run_user=mysql

cmd=${1:?usage: mysql.sh start|stop|destroy|url NAME [PORT]}
name=${2:?server name required}
dir=$CLUSTER_DIR/$name

case "$cmd" in
start)
  port=${3:?port required}
  shift 3
  mkdir -p "$dir"
  chown "$run_user": "$dir" 2>/dev/null || true
  fresh=0
  if [ ! -d "$dir/data/mysql" ]; then
    fresh=1
    "$INSTALL_DB" --no-defaults --user="$run_user" --datadir="$dir/data" --auth-root-authentication-method=normal \
      --skip-test-db >"$CLUSTER_DIR/$name.install.log" 2>&1 \
      || { cat "$CLUSTER_DIR/$name.install.log" >&2; exit 1; }
  fi
  # Temporary tables (information_schema queries build them) in the server's own directory:
  # several test servers, and other users of the host, share /tmp.
  mkdir -p "$dir/tmp" && chown "$run_user": "$dir/tmp" 2>/dev/null || true
  "$MYSQLD" --no-defaults --user="$run_user" --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
    --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/server.log" --tmpdir="$dir/tmp" \
    --skip-name-resolve --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 \
    --sync-binlog=0 --max-connections=200 --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    "$@" >/dev/null 2>&1 &
  for _ in $(seq 1 120); do
    if "$CLIENT" --no-defaults -uroot --socket="$dir/mysqld.sock" -e "SELECT 1" >/dev/null 2>&1; then
      break
    fi
    if ! kill -0 $! 2>/dev/null; then
      tail -20 "$dir/server.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  "$CLIENT" --no-defaults -uroot --socket="$dir/mysqld.sock" -e "SELECT 1" >/dev/null \
    || { tail -20 "$dir/server.log" >&2; exit 1; }
  if [ "$fresh" = 1 ]; then
    # root over TCP with a password, like a production server.
    "$CLIENT" --no-defaults -uroot --socket="$dir/mysqld.sock" -e "
      CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
      ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
      GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
      FLUSH PRIVILEGES;"
  fi
  echo "$port" >"$CLUSTER_DIR/$name.port"
  ;;
stop)
  if [ -f "$dir/mysqld.pid" ]; then
    pid=$(cat "$dir/mysqld.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  ;;
destroy)
  "$0" stop "$name"
  rm -rf "$dir" "$CLUSTER_DIR/$name".*
  ;;
url)
  port=$(cat "$CLUSTER_DIR/$name.port")
  echo "mysql://root:$PASSWORD@127.0.0.1:$port/mysql"
  ;;
*)
  echo "unknown command $cmd" >&2
  exit 2
  ;;
esac
