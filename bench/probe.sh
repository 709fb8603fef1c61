# Steady-state lag, measured the same way for every source engine and every bench (sourced by
# bench/lib.sh and bench/mysql.sh, not run).
#
# A probe table on the source gets a row stamped with the source's clock every 100 ms, and on
# the target a deferred constraint trigger, enabled ALWAYS so that it fires under the sink's
# session_replication_role = replica, stamps clock_timestamp() as the applying transaction
# commits. One machine, one clock: a probe row's lag is stamp - t, from its source commit to its
# target commit. (track_commit_timestamp cannot measure this: a transaction applied under a
# replication origin records the origin's timestamp, the source's, as its commit time.)

# probe_target URL TABLE: installs the stamping trigger on TABLE (its key column is id) of the
# target database at URL.
probe_target() {
  psql -X -q -v ON_ERROR_STOP=1 -d "$1" >/dev/null <<SQL
CREATE SCHEMA IF NOT EXISTS bench_lag;
CREATE TABLE IF NOT EXISTS bench_lag.applied (id bigint PRIMARY KEY, at timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION bench_lag.stamp() RETURNS trigger LANGUAGE plpgsql AS
  \$\$BEGIN INSERT INTO bench_lag.applied VALUES (NEW.id, clock_timestamp()); RETURN NULL; END\$\$;
CREATE CONSTRAINT TRIGGER bench_lag_stamp AFTER INSERT ON $2 DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION bench_lag.stamp();
ALTER TABLE $2 ENABLE ALWAYS TRIGGER bench_lag_stamp;
SQL
}

# probe_writes SECONDS: SQL on stdout, one probe INSERT (PROBE_SQL) every 100 ms for SECONDS,
# for one client session (psql or mariadb reading stdin) to run as it comes.
probe_writes() {
  local end=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$end" ]; do
    echo "$PROBE_SQL"
    sleep 0.1
  done
}

# probe_lags URL TABLE T_EXPR: the lag in seconds of every stamped probe row of TABLE on the
# target at URL, one per line; T_EXPR is the probe's source time as a timestamptz.
probe_lags() {
  psql -X -At -d "$1" -c "SELECT extract(epoch FROM a.at - $3) FROM $2 p JOIN bench_lag.applied a USING (id)"
}

# lag_stats FILE: "count p50 p99 max" of the lags in FILE, in seconds (nearest-rank percentiles).
lag_stats() {
  sort -g "$1" | awk '{ v[NR] = $1 }
    function rank(p,  i) { i = int(p * NR); if (i < p * NR) i++; if (i < 1) i = 1; return v[i] }
    END { if (NR == 0) { print "0 - - -"; exit } printf "%d %.3f %.3f %.3f\n", NR, rank(0.5), rank(0.99), v[NR] }'
}
