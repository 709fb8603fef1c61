-- Ferry's sample database: a small shop with every common PostgreSQL type, used by `ferry demo`
-- and by the integration tests. {{ROWS}} is replaced by the number of order lines to create.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ecstatic 🎉');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);

CREATE TABLE customers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    mood       mood
);
CREATE TABLE products (
    id    serial PRIMARY KEY,
    sku   varchar(32) NOT NULL UNIQUE,
    title text NOT NULL,
    price numeric(12,2) NOT NULL CHECK (price >= 0),
    attrs jsonb
);
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    placed_at   timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    updated_at  timestamptz
);
CREATE INDEX orders_customer_idx ON orders (customer_id, placed_at DESC);
CREATE TABLE order_items (
    order_id   bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line       int NOT NULL,
    product_id int NOT NULL REFERENCES products (id),
    qty        positive_int NOT NULL,
    price      numeric(12,2) NOT NULL,
    amount     numeric(14,2) GENERATED ALWAYS AS (qty * price) STORED,
    PRIMARY KEY (order_id, line)
);
CREATE INDEX order_items_product_idx ON order_items (product_id);

-- Post-data objects that pg_restore brings over: a trigger and its function.
CREATE FUNCTION touch_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch_order();

-- A partitioned table with a partitioned primary key and index.
CREATE TABLE events (
    id      bigint NOT NULL,
    at      timestamptz NOT NULL,
    kind    text,
    payload jsonb,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE INDEX events_kind_idx ON events (kind);

-- Names that need quoting.
CREATE TABLE "Audit Log" ("Id" serial PRIMARY KEY, "Message" text, "At" timestamp(3));
CREATE TABLE "MixedCase" ("Key" int PRIMARY KEY, "Value" text);

-- No primary key: replicated by whole-row identity. Duplicate rows on purpose.
CREATE TABLE page_views (path text, viewed_at timestamptz, ua text);
ALTER TABLE page_views REPLICA IDENTITY FULL;

-- Every common type, with the values that break naive tools.
CREATE TABLE type_zoo (
    id     int PRIMARY KEY,
    i2     int2, i4 int4, i8 int8,
    num    numeric, num_p numeric(40,20),
    f4     float4, f8 float8,
    t      text, c char(5), vc varchar(10),
    b      bytea, bo bool,
    d      date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
    u      uuid, j json, jb jsonb,
    arr_i  int[], arr_t text[], arr_2d int[][],
    m      mood, pos positive_int,
    ip     inet, net cidr, mac macaddr,
    big    text,
    gen    int8 GENERATED ALWAYS AS (i4::int8 * 2) STORED
);
INSERT INTO type_zoo (id, i2, i4, i8, num, num_p, f4, f8, t, c, vc, b, bo, d, tm, tmtz, ts, tstz, iv, u, j, jb, arr_i, arr_t, arr_2d, m, pos, ip, net, mac, big) VALUES
 (1, 32767, 2147483647, 9223372036854775807, 'NaN', 12345678901234567890.12345678901234567890, 'Infinity', '-Infinity',
  U&'caf\00E9 NFC', 'ab', 'x', '\x00ff10'::bytea, true, '2000-02-29', '23:59:59.999999', '12:00:00.000001+05:30',
  '2024-01-01 00:00:00.000001', '2024-06-30 23:59:59.999999+00', '1 year 2 mons 3 days 04:05:06.789012',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, "x"], "a": 1}', '{"b": {"c": null}, "n": 1.000}',
  '{1,NULL,3}', '{"with space","quote\"d",NULL,""}', '{{1,2},{3,4}}', 'ecstatic 🎉', 7, '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
  (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 40000) g)),
 (2, -32768, -2147483648, -9223372036854775808, '-0.000000000000000000001', -0.00000000000000000001, '-0', 'NaN',
  U&'cafe\0301 NFD', '', '', '\x'::bytea, false, '0001-01-01 BC', '00:00:00', '00:00:00-12', '-infinity', 'infinity', '-178000000 years',
  '00000000-0000-0000-0000-000000000000', '[]', '[]', '{}', '{}', '{}', 'sad', 1, '::1', '2001:db8::/32', '00:00:00:00:00:00',
  ''),
 (3, 0, 0, 0, 1e-100, 0, 1.17549435e-38, 2.2250738585072014e-308, E'emoji 😀 tab\t newline\n backslash \\ end', 'abcde', 'abcdefghij',
  decode(repeat('ff00', 1000), 'hex'), NULL, 'infinity', '24:00:00', '24:00:00+00', '294276-12-31 23:59:59.999999', '4713-01-01 00:00:00+00 BC', '-1 microsecond',
  gen_random_uuid(), '"just a string"', 'null', '{-2147483648,2147483647}', '{"ü","日本語"}', NULL, 'ok', 2147483647, '0.0.0.0', '0.0.0.0/0', 'ff:ff:ff:ff:ff:ff',
  repeat('é', 600000)),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- Data.
INSERT INTO customers (email, name, created_at, mood)
SELECT 'user' || g || '@example.com', 'Customer ' || g, '2024-01-01'::timestamptz + g * interval '17 seconds',
       (ARRAY['sad','ok','happy','ecstatic 🎉']::mood[])[1 + g % 4]
FROM generate_series(1, greatest({{ROWS}} / 20, 10)) g;
INSERT INTO products (sku, title, price, attrs)
SELECT 'SKU-' || g, 'Product ' || g, (g % 1000) + 0.99, jsonb_build_object('color', (ARRAY['red','green','blue'])[1 + g % 3], 'weight', g % 50)
FROM generate_series(1, greatest({{ROWS}} / 100, 10)) g;
INSERT INTO orders (customer_id, placed_at, status)
SELECT 1 + g % greatest({{ROWS}} / 20, 10), '2025-01-01'::timestamptz + g * interval '1 minute', (ARRAY['new','paid','shipped'])[1 + g % 3]
FROM generate_series(1, greatest({{ROWS}} / 4, 10)) g;
INSERT INTO order_items (order_id, line, product_id, qty, price)
SELECT 1 + (g - 1) / 4, 1 + (g - 1) % 4, 1 + g % greatest({{ROWS}} / 100, 10), 1 + g % 5, (g % 500) + 0.5
FROM generate_series(1, greatest({{ROWS}}, 40)) g;
INSERT INTO events (id, at, kind, payload)
SELECT g, '2025-06-01'::timestamptz + g * interval '5 minutes', (ARRAY['click','view','buy'])[1 + g % 3], jsonb_build_object('n', g)
FROM generate_series(1, greatest({{ROWS}} / 10, 10)) g;
INSERT INTO "Audit Log" ("Message", "At") SELECT 'message ' || g, '2025-01-01 00:00:00.123'::timestamp + g * interval '1 second' FROM generate_series(1, 1000) g;
INSERT INTO "MixedCase" SELECT g, repeat('v', g % 20) FROM generate_series(1, 500) g;
INSERT INTO page_views SELECT '/p/' || (g % 100), '2025-01-01'::timestamptz + (g % 50) * interval '1 hour', 'agent' FROM generate_series(1, greatest({{ROWS}} / 50, 10)) g;
ANALYZE;
