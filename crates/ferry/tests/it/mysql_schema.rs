//! MySQL/MariaDB schema fidelity on real MariaDB: views translated or listed, triggers and
//! routines listed, FULLTEXT and prefix indexes translated, index types and collations
//! reported, and `--target-schema` (docs/mysql-types.md).

use std::time::Duration;

use crate::harness::*;
use crate::mysql::{dispose, fresh, my_sql};
use crate::mysql_cdc::{my_query, wait_caught_up, wait_streaming};

fn find<'a>(list: &'a serde_json::Value, key: &str, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|x| x[key] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[tokio::test]
async fn mysql_views_triggers_routines_and_indexes_are_translated_or_listed() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "myschema").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            r#"USE {db};
            CREATE TABLE customers (id int PRIMARY KEY, name varchar(50) NOT NULL);
            CREATE TABLE orders (
              id int NOT NULL AUTO_INCREMENT PRIMARY KEY, customer_id int NOT NULL, total decimal(10,2) NOT NULL,
              title varchar(200), note text, code varchar(100), bin varbinary(64),
              FULLTEXT KEY ft_text (title, note), KEY k_code (code(10)), UNIQUE KEY uq_code (code(20)), KEY k_bin (bin(4))
            ) ENGINE=InnoDB;
            INSERT INTO customers VALUES (1, 'Ada'), (2, 'Brian'), (3, 'Carla');
            INSERT INTO orders (customer_id, total, title, note, code, bin) VALUES
              (1, 12.50, 'red bicycle', 'deliver before noon', 'ABCDEFGHIJKLMNOPQRST-1', x'00010203ff'),
              (1, 5.00, 'blue lamp', NULL, 'ABCDEFGHIJ-other', x'00010203aa'),
              (2, 99.99, 'green chair', 'fragile furniture', 'ZZZ', NULL),
              (3, 10.00, NULL, 'just a note', NULL, NULL);
            CREATE VIEW v_big_orders AS
              SELECT o.id, c.name, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.total > 10;
            CREATE VIEW v_big_names AS SELECT name FROM v_big_orders;
            CREATE VIEW v_sizes AS SELECT id, IF(total > 50, 'big', 'small') AS size FROM orders;
            CREATE TRIGGER trg_orders_bi BEFORE INSERT ON orders FOR EACH ROW SET NEW.note = COALESCE(NEW.note, 'none');
            CREATE PROCEDURE p_count() SELECT COUNT(*) FROM orders;
            CREATE FUNCTION f_double(x int) RETURNS int DETERMINISTIC RETURN x * 2;"#
        ),
    );

    // ferry check lists every object with its handling, in JSON ...
    let run = ferry(&["check", "--source", &source, "--target", &target, "--json"]);
    assert_eq!(run.code, 0, "only warnings expected: {}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let schema = &report["plan"]["schema"];
    assert_eq!(schema["target_schema"], "public", "{schema}");
    let views = &schema["views"];
    let big = find(views, "name", "v_big_orders");
    assert_eq!(big["handling"], "translated", "{big}");
    assert!(
        big["target_sql"]
            .as_str()
            .unwrap()
            .starts_with(r#"CREATE VIEW "public"."v_big_orders" AS select"#),
        "{big}"
    );
    let names = find(views, "name", "v_big_names");
    assert_eq!(names["handling"], "translated", "{names}");
    assert_eq!(names["depends_on"], serde_json::json!(["v_big_orders"]));
    let sizes = find(views, "name", "v_sizes");
    assert_eq!(sizes["handling"], "port_by_hand", "{sizes}");
    assert!(sizes["note"].as_str().unwrap().contains("IF()"), "{sizes}");
    assert!(sizes["definition"].as_str().unwrap().contains("if("), "{sizes}");
    let order = |n: &str| views.as_array().unwrap().iter().position(|v| v["name"] == n).unwrap();
    assert!(order("v_big_orders") < order("v_big_names"), "created in dependency order: {views}");
    let trigger = find(&schema["triggers"], "name", "trg_orders_bi");
    assert_eq!(
        (trigger["table"].as_str(), trigger["timing"].as_str(), trigger["event"].as_str()),
        (Some("orders"), Some("BEFORE"), Some("INSERT"))
    );
    assert!(
        trigger["definition"].as_str().unwrap().contains("COALESCE(NEW.note, 'none')"),
        "{trigger}"
    );
    let procedure = find(&schema["routines"], "name", "p_count");
    assert_eq!(procedure["kind"], "PROCEDURE");
    assert!(
        procedure["definition"].as_str().unwrap().contains("SELECT COUNT(*) FROM orders"),
        "{procedure}"
    );
    let function = find(&schema["routines"], "name", "f_double");
    assert_eq!(function["kind"], "FUNCTION");
    assert!(function["definition"].as_str().unwrap().contains("RETURN x * 2"), "{function}");
    let indexes = &schema["indexes"];
    let ft = find(indexes, "name", "ft_text");
    assert_eq!(
        (ft["index_type"].as_str(), ft["handling"].as_str()),
        (Some("FULLTEXT"), Some("translated"))
    );
    assert!(
        ft["target_sql"].as_str().unwrap().contains("USING gin (to_tsvector('simple', "),
        "{ft}"
    );
    let k_code = find(indexes, "name", "k_code");
    assert_eq!(
        (k_code["index_type"].as_str(), k_code["parts"][0]["prefix"].as_u64()),
        (Some("BTREE"), Some(10))
    );
    assert!(
        k_code["parts"][0]["collation"].as_str().unwrap().starts_with("utf8mb4_"),
        "{k_code}"
    );
    assert!(k_code["target_sql"].as_str().unwrap().contains(r#"(left("code", 10))"#), "{k_code}");
    let uq = find(indexes, "name", "uq_code");
    assert_eq!(uq["unique"], true);
    assert!(uq["note"].as_str().unwrap().contains("exactly MySQL's rule"), "{uq}");
    let k_bin = find(indexes, "name", "k_bin");
    assert!(
        k_bin["target_sql"].as_str().unwrap().contains(r#"(substr("bin", 1, 4))"#),
        "{k_bin}"
    );
    assert_eq!(find(indexes, "name", "PRIMARY")["handling"], "built");
    let findings = report["findings"].as_array().unwrap();
    for (check, needle) in [
        ("views", "view v_sizes is not translated"),
        ("triggers", "trigger trg_orders_bi (BEFORE INSERT on orders)"),
        ("routines", "procedure p_count is not migrated"),
        ("routines", "function f_double is not migrated"),
        ("indexes", "FULLTEXT index ft_text on orders: a GIN index"),
    ] {
        assert!(
            findings
                .iter()
                .any(|f| f["check"] == check && f["message"].as_str().unwrap().contains(needle)),
            "{needle}: {report}"
        );
    }
    // ... and as text.
    let run = ferry(&["check", "--source", &source, "--target", &target]);
    assert_eq!(run.code, 0, "{}", run.all());
    for needle in [
        "index ft_text FULLTEXT (title",
        "index k_code BTREE (code(10) utf8mb4_",
        "index uq_code UNIQUE BTREE (code(20)",
        "v_big_orders: translated, created after the data",
        "v_sizes: NOT translated, port by hand",
        "trg_orders_bi on orders (BEFORE INSERT)",
        "procedure p_count",
        "function f_double",
    ] {
        assert!(run.stdout.contains(needle), "{needle} not in:\n{}", run.stdout);
    }

    // The load creates what the plan says, and its summary lists the rest.
    let run = ferry(&["migrate", "--source", &source, "--target", &target, "--stop-after", "full-load"]);
    assert_eq!(run.code, 0, "{}", run.all());
    for needle in [
        "views created: v_big_orders, v_big_names",
        "index translated: orders.ft_text (FULLTEXT)",
        "index translated: orders.k_code (BTREE)",
        "object(s) NOT migrated, to port by hand",
        "view v_sizes: not provably portable",
        "trigger orders.trg_orders_bi",
        "procedure p_count",
        "function f_double",
    ] {
        assert!(run.stdout.contains(needle), "{needle} not in:\n{}", run.stdout);
    }
    let t = connect(&target).await;
    // The translated views return what MySQL's return.
    let on_pg = lines(&t, "SELECT concat_ws('|', id, name, total) FROM public.v_big_orders ORDER BY id").await;
    let on_my: Vec<String> = my_query(
        "FERRY_TEST_MYSQL",
        &format!("SELECT concat_ws('|', id, name, total) FROM {db}.v_big_orders ORDER BY id"),
    )
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(on_pg, on_my);
    assert_eq!(on_pg, ["1|Ada|12.50", "3|Brian|99.99"]);
    assert_eq!(
        lines(&t, "SELECT name FROM public.v_big_names ORDER BY name").await,
        ["Ada", "Brian"]
    );
    assert!(
        t.query_opt("SELECT 1 FROM pg_views WHERE viewname = 'v_sizes'", &[])
            .await
            .unwrap()
            .is_none(),
        "a view that is not portable is not created"
    );
    // The GIN and expression indexes, as PostgreSQL reports them.
    let def = |name: &'static str| {
        let t = &t;
        async move {
            t.query_one(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname = $1",
                &[&name],
            )
            .await
            .unwrap_or_else(|e| panic!("no index {name}: {e}"))
            .get::<_, String>(0)
        }
    };
    let ft = def("orders_ft_text").await;
    assert!(ft.contains("USING gin (to_tsvector('simple'::regconfig"), "{ft}");
    // (PostgreSQL prints left, a keyword, quoted.)
    let k_code = def("orders_k_code").await.replace('"', "");
    assert!(k_code.contains("left((code)::text, 10)"), "{k_code}");
    let uq = def("orders_uq_code").await.replace('"', "");
    assert!(
        uq.starts_with("CREATE UNIQUE INDEX") && uq.contains("left((code)::text, 20)"),
        "{uq}"
    );
    assert!(def("orders_k_bin").await.contains("substr(bin, 1, 4)"));
    // MATCH ... AGAINST rewritten with the index's expression.
    assert_eq!(
        lines(
            &t,
            "SELECT id::text FROM public.orders
             WHERE to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(note, '')) @@ plainto_tsquery('simple', 'fragile')"
        )
        .await,
        ["3"]
    );
    // The unique prefix index keeps MySQL's rule: the first 20 characters are unique.
    let dup = t
        .execute(
            "INSERT INTO public.orders (customer_id, total, code) VALUES (1, 1, 'ABCDEFGHIJKLMNOPQRST-2')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION), "{dup}");
    t.execute(
        "INSERT INTO public.orders (customer_id, total, code) VALUES (1, 1, 'ABCDEFGHIJKLMNOPQRSx')",
        &[],
    )
    .await
    .unwrap();

    // State written before the target schema was recorded (no column): read as public, the
    // column added back.
    t.batch_execute("ALTER TABLE ferry.mysql_state DROP COLUMN target_schema")
        .await
        .unwrap();
    let status = ferry(&["status", "--source", &source, "--target", &target, "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(st["target_schema"], "public", "{st}");
    let column: i64 = t
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'ferry' AND table_name = 'mysql_state' AND column_name = 'target_schema'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(column, 1);
    drop(t);
    dispose("FERRY_TEST_MYSQL", dbs).await;
}

#[tokio::test]
async fn mysql_target_schema_holds_the_tables_the_stream_and_verify() {
    let (source, target, dbs) = fresh("FERRY_TEST_MYSQL", "mytschema").await;
    let db = &dbs.name;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!(
            "USE {db};
             CREATE TABLE items (id int NOT NULL AUTO_INCREMENT PRIMARY KEY, name varchar(20) NOT NULL, kind enum('a','b'));
             INSERT INTO items (name, kind) VALUES ('one', 'a'), ('two', 'b');
             CREATE VIEW v_items AS SELECT id, name FROM items WHERE id > 1;"
        ),
    );
    // Names PostgreSQL reserves, Ferry's state schema, and a PostgreSQL source are refused.
    for (schema, why) in [
        ("pg_x", "reserved by PostgreSQL"),
        ("ferry", "Ferry's state schema"),
        ("", "1 to 63 bytes"),
    ] {
        let run = ferry(&["check", "--source", &source, "--target", &target, "--target-schema", schema]);
        assert_eq!(run.code, 2, "{}", run.all());
        assert!(run.stderr.contains(why), "{schema}: {}", run.all());
    }
    let run = ferry(&["check", "--source", &target, "--target", &target, "--target-schema", "other"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("--target-schema is for MySQL/MariaDB sources"), "{}", run.all());

    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target, "--target-schema", "other"]);
    wait_streaming(&target).await;
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("USE {db}; INSERT INTO items (name, kind) VALUES ('three', 'a'); UPDATE items SET name = 'uno' WHERE id = 1; DELETE FROM items WHERE id = 2;"),
    );
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    let t = connect(&target).await;
    assert_eq!(
        lines(&t, "SELECT x::text FROM other.items x ORDER BY id").await,
        ["(1,uno,a)", "(3,three,a)"]
    );
    assert_eq!(lines(&t, "SELECT name FROM other.v_items ORDER BY id").await, ["three"]);
    let public: Option<String> = t.query_one("SELECT to_regclass('public.items')::text", &[]).await.unwrap().get(0);
    assert_eq!(public, None, "nothing lands in public");
    assert_eq!(
        lines(&t, "SELECT DISTINCT schema_name FROM ferry.tables").await,
        ["other"],
        "the progress names the schema"
    );

    // verify and status find the tables where the migration recorded them.
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    let wrong = ferry(&["verify", "--source", &source, "--target", &target, "--target-schema", "public"]);
    assert_ne!(wrong.code, 0, "{}", wrong.all());
    assert!(wrong.all().contains("loaded into schema other"), "{}", wrong.all());
    let status = ferry(&["status", "--source", &source, "--target", &target, "--json"]);
    assert_eq!(status.code, 0, "{}", status.all());
    let st: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(st["target_schema"], "other");
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());

    // A restart without the flag resumes in the recorded schema; one naming another is refused.
    let refused = ferry(&["migrate", "--source", &source, "--target", &target, "--target-schema", "public"]);
    assert_ne!(refused.code, 0, "{}", refused.all());
    assert!(refused.all().contains("loaded into schema other"), "{}", refused.all());
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]);
    my_sql(
        "FERRY_TEST_MYSQL",
        &format!("INSERT INTO {db}.items (name, kind) VALUES ('four', 'b')"),
    );
    wait_caught_up("FERRY_TEST_MYSQL", &target, Duration::from_secs(60)).await;
    assert_eq!(
        lines(&t, "SELECT x::text FROM other.items x ORDER BY id").await,
        ["(1,uno,a)", "(3,three,a)", "(4,four,b)"]
    );
    let run = m.terminate();
    assert_eq!(run.code, 0, "{}", run.all());
    drop(t);
    dispose("FERRY_TEST_MYSQL", dbs).await;
}
