//! Kafka offsets kept in the target, committed with the changes they brought: per apply (a
//! single applier, or an apply group) and partition, the next record to apply.

use ferry_postgres::state::StateStore;
use ferry_postgres::PgError;

/// The member name of a single applier's rows (an apply group's members have their own).
pub const SINGLE_APPLIER: &str = "single applier";

/// A single applier's record of a partition, staged with each batch: $1 the apply's id (its
/// group), $2 topic, $3 partition, $4 the next offset (as text).
pub fn record_sql(store: &StateStore) -> String {
    let q = store.quoted();
    format!(
        "INSERT INTO {q}.kafka_offsets (group_id, topic, partition, next_offset, member, claim, member_id)
              VALUES ($1, $2, $3::text::int, $4::text::bigint, '{SINGLE_APPLIER}', 0, $1)
         ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
    )
}

/// A group member's claim of a partition: $1 group, $2 topic, $3 partition, $4 member, $5 the
/// claim's token, $6 the member's id; returns where the partition stands.
pub fn claim_sql(store: &StateStore) -> String {
    let q = store.quoted();
    format!(
        "INSERT INTO {q}.kafka_offsets (group_id, topic, partition, member, claim, member_id) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (group_id, topic, partition) DO UPDATE
            SET member = EXCLUDED.member, claim = EXCLUDED.claim, member_id = EXCLUDED.member_id, claimed_at = now()
         RETURNING next_offset, last_commit, last_order"
    )
}

/// A claimed partition's advance, staged with each batch (fails unless the claim still holds):
/// $1 group, $2 topic, $3 partition, $4 next offset, $5 last commit, $6 last order, $7 token,
/// all as text.
pub fn advance_sql(store: &StateStore) -> String {
    let q = store.quoted();
    format!("SELECT {q}.kafka_advance($1, $2, $3::text::int, $4::text::bigint, $5::text::bigint, $6::text::bigint, $7::text::bigint)")
}

/// How far before a claimed partition's next record the consumer starts: a broker may answer
/// a fetch from an offset inside a record batch with the batches after it (tansu 0.6 does),
/// which would skip the rest of that batch. Starting this many records earlier (librdkafka's
/// producers put at most 10,000 records in a batch) and stepping over what is before the
/// claimed offset reads every record whatever the broker does.
pub const BACKSTEP: i64 = 10_000;

/// Creates the offsets table and the function that advances a claimed partition.
pub async fn ensure(c: &mut tokio_postgres::Client, store: &StateStore) -> Result<(), PgError> {
    let q = store.quoted();
    let tx = c
        .transaction()
        .await
        .map_err(|e| PgError::query("preparing Kafka offsets on the target", e))?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock(hashtext('ferry.kafka_offsets'));
         CREATE TABLE IF NOT EXISTS {q}.kafka_offsets (
            group_id text NOT NULL,
            topic text NOT NULL,
            partition int NOT NULL,
            next_offset bigint NOT NULL DEFAULT 0,
            last_commit bigint NOT NULL DEFAULT 0,
            last_order bigint NOT NULL DEFAULT 0,
            member text NOT NULL,
            member_id text,
            claim bigint NOT NULL,
            claimed_at timestamptz NOT NULL DEFAULT now(),
            high_watermark bigint,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (group_id, topic, partition));
         ALTER TABLE {q}.kafka_offsets ADD COLUMN IF NOT EXISTS member_id text;
         COMMENT ON TABLE {q}.kafka_offsets IS 'ferry apply --group: per partition, the next record to apply and which member holds it';
         CREATE OR REPLACE FUNCTION {q}.kafka_advance(g text, t text, p int, n bigint, lc bigint, lo bigint, c bigint)
           RETURNS void LANGUAGE plpgsql SET search_path = '' AS $f$
         BEGIN
           UPDATE {q}.kafka_offsets SET next_offset = n, last_commit = lc, last_order = lo, updated_at = now()
            WHERE group_id = g AND topic = t AND partition = p AND claim = c;
           IF NOT FOUND THEN
             RAISE EXCEPTION 'partition % of topic % was taken over by another member of group %', p, t, g
               USING ERRCODE = '40001';
           END IF;
         END $f$;"
    ))
    .await
    .map_err(|e| PgError::query("preparing Kafka offsets on the target", e))?;
    tx.commit()
        .await
        .map_err(|e| PgError::query("preparing Kafka offsets on the target", e))
}
