//! MySQL/MariaDB correctness gaps closed (issue 18, item 4), each on a real MariaDB: text in
//! every character set Ferry claims to convert arrives as the same Unicode through the full load
//! and the binlog stream (and a set it cannot convert is refused by `ferry check`); TRUNCATE of
//! any legal name empties the target table; a write logged in STATEMENT format stops the stream
//! naming it and the fix, and `--ddl-applied` continues past it; a failed `read_only` reset is
//! an error, never "writable again".

use std::time::Duration;

use ferry_mysql::charset::Charset;
use ferry_mysql::endpoint::query;

use crate::harness::*;
use crate::mysql::{dispose, fresh, mariadb, my_sql, server, Writable};
use crate::mysql_cdc::{my_query, wait_caught_up, wait_streaming};

const MY: &str = "FERRY_TEST_MYSQL";

/// The single-byte and multi-byte character sets Ferry decodes from the binlog.
const SINGLE: &[&str] = &[
    "latin1", "latin2", "latin5", "latin7", "greek", "hebrew", "cp1250", "cp1251", "cp1256", "cp1257", "cp866", "koi8r", "koi8u", "tis620",
    "macroman",
];
const DOUBLE: &[&str] = &["sjis", "cp932", "ujis", "gbk", "gb2312", "euckr"];

/// The server is the oracle: every byte of each single-byte set, and every byte and two-byte
/// sequence (lead 0x81-0xFE, trail 0x40-0xFE) of each multi-byte set, plus EUC-JP's three-byte
/// forms, converted by the server to utf8mb4 and by Ferry's
/// decoder: the same character, or no character on both sides (the server writes '?', Ferry
/// refuses: a value that has no character never becomes a different one).
#[tokio::test]
async fn mysql_charsets_decode_as_the_server_converts() {
    let (source, _target, dbs) = fresh(MY, "mycs").await;
    let ep = ferry_mysql::MyEndpoint::parse(&source, None).unwrap();
    let mut c = ep.connect().await.unwrap();
    let create = "CREATE TABLE seqs (id int PRIMARY KEY, kind varchar(8) NOT NULL, b varbinary(4) NOT NULL)";
    query::<(i64,)>(&mut c, "creating the sequences", create).await.unwrap();
    let mut seqs: Vec<(&str, Vec<u8>)> = (0..=255u8).map(|b| ("single", vec![b])).collect();
    for lead in 0x81..=0xFEu8 {
        for trail in 0x40..=0xFEu8 {
            seqs.push(("double", vec![lead, trail]));
        }
    }
    for b2 in 0xA1..=0xFEu8 {
        for b3 in 0xA1..=0xFEu8 {
            seqs.push(("euc3", vec![0x8F, b2, b3]));
        }
    }
    for chunk in seqs.iter().enumerate().collect::<Vec<_>>().chunks(4000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(i, (kind, b))| format!("({i}, '{kind}', x'{}')", hex(b)))
            .collect();
        let insert = format!("INSERT INTO seqs VALUES {}", values.join(", "));
        query::<(i64,)>(&mut c, "writing the sequences", &insert).await.unwrap();
    }
    // A set the server lacks is said, not compared.
    let known: Vec<(String,)> = query(
        &mut c,
        "listing the character sets",
        "SELECT CHARACTER_SET_NAME FROM information_schema.CHARACTER_SETS",
    )
    .await
    .unwrap();
    let known: Vec<String> = known.into_iter().map(|(n,)| n).collect();
    let mut report = Vec::new();
    let mut compared = 0usize;
    let sets = SINGLE
        .iter()
        .map(|s| (*s, "single"))
        .chain(DOUBLE.iter().flat_map(|s| [(*s, "single"), (*s, "double")]))
        .chain([("ujis", "euc3")]);
    for (set, kind) in sets {
        let decoder = Charset::of(set).unwrap_or_else(|| panic!("no decoder for {set}"));
        if !known.iter().any(|k| k == set) {
            eprintln!("the server has no character set {set}: not compared");
            continue;
        }
        let sql = format!("SELECT id, HEX(CONVERT(CONVERT(b USING {set}) USING utf8mb4)) FROM seqs WHERE kind = '{kind}' ORDER BY id");
        let rows: Vec<(i64, String)> = query(&mut c, "converting on the server", &sql).await.unwrap();
        let mut wrong = Vec::new();
        for (id, server_hex) in rows {
            let bytes = &seqs[id as usize].1;
            let server = String::from_utf8(unhex(&server_hex)).unwrap();
            let ours = decoder.decode(bytes).map(|s| s.into_owned());
            // The server writes '?' for what has no character (and, after a lead byte without
            // a valid trail, goes on with the trail as a character of its own).
            // (MySQL's tis620 answers U+FFFD instead.)
            let server_has_none = (server.contains('?') && !bytes.contains(&b'?')) || server.contains('\u{FFFD}');
            compared += 1;
            match (&ours, server_has_none) {
                (Ok(s), false) if *s == server => {}
                (Err(_), true) => {}
                _ => wrong.push(format!(
                    "{} -> server {:?} ({}), Ferry {:?}",
                    hex(bytes),
                    server,
                    server_hex,
                    ours.as_ref().map(|s| format!("{s} ({})", hex(s.as_bytes())))
                )),
            }
        }
        if !wrong.is_empty() {
            report.push(format!("{set}: {} differ:\n  {}", wrong.len(), wrong.join("\n  ")));
        }
    }
    assert!(compared > 100_000, "{compared}");
    assert!(
        report.is_empty(),
        "Ferry's decoders differ from the server's conversion:\n{}",
        report.join("\n")
    );
    drop(c);
    dispose(MY, dbs).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).unwrap())
        .collect()
}

/// (column, its definition, a value with characters specific to its set).
const COLUMNS: &[(&str, &str, &str)] = &[
    ("c_utf8mb4", "varchar(40) CHARACTER SET utf8mb4", "😀 emoji ünïcode 日本"),
    ("c_utf8mb3", "varchar(40) CHARACTER SET utf8mb3", "utf8mb3 é 日本 Ж"),
    ("c_latin1", "varchar(40) CHARACTER SET latin1", "café € „x“ ÿ Œ ™"),
    ("c_latin2", "varchar(40) CHARACTER SET latin2", "őű ŐŰ čž Łódź"),
    ("c_cp1251", "varchar(40) CHARACTER SET cp1251", "Жёлтый ЁЖ № ї"),
    ("c_sjis", "varchar(40) CHARACTER SET sjis", "日本語 ｶﾀｶﾅ ー"),
    ("c_gbk", "varchar(40) CHARACTER SET gbk", "中文 繁體"),
    ("c_ascii", "varchar(40) CHARACTER SET ascii", "plain ascii ~ \\ tab\there"),
    ("c_cp1250", "varchar(40) CHARACTER SET cp1250", "Łódź ő ř €"),
    ("c_latin5", "varchar(40) CHARACTER SET latin5", "İstanbul ğş"),
    ("c_latin7", "varchar(40) CHARACTER SET latin7", "Ąžuolas ė"),
    ("c_greek", "varchar(40) CHARACTER SET greek", "Ελληνικά"),
    ("c_hebrew", "varchar(40) CHARACTER SET hebrew", "עברית"),
    ("c_cp1256", "varchar(40) CHARACTER SET cp1256", "العربية"),
    ("c_cp1257", "varchar(40) CHARACTER SET cp1257", "Ąčęėįšųūž"),
    ("c_cp866", "varchar(40) CHARACTER SET cp866", "Привет ░"),
    ("c_koi8r", "varchar(40) CHARACTER SET koi8r", "Привет мир"),
    ("c_koi8u", "varchar(40) CHARACTER SET koi8u", "Україна ґ"),
    ("c_tis620", "varchar(40) CHARACTER SET tis620", "ภาษาไทย"),
    ("c_macroman", "varchar(40) CHARACTER SET macroman", "café π ∆ ﬁ"),
    ("c_cp932", "varchar(40) CHARACTER SET cp932", "日本 ① ～"),
    ("c_ujis", "varchar(40) CHARACTER SET ujis", "日本語 かな"),
    ("c_gb2312", "varchar(40) CHARACTER SET gb2312", "简体中文"),
    ("c_euckr", "varchar(40) CHARACTER SET euckr", "한국어"),
    ("c_ucs2", "varchar(40) CHARACTER SET ucs2", "ünï 日本"),
    ("c_utf16", "varchar(40) CHARACTER SET utf16", "😀 ünï 日本"),
    ("c_utf16le", "varchar(40) CHARACTER SET utf16le", "😀 ünï 日本"),
    ("c_utf32", "varchar(40) CHARACTER SET utf32", "😀 ünï 日本"),
    // Other column kinds: CHAR (trailing spaces), TEXT, ENUM and SET labels.
    ("ch_sjis", "char(10) CHARACTER SET sjis", "日本"),
    ("ch_utf32", "char(10) CHARACTER SET utf32", "日本"),
    ("tx_cp1251", "text CHARACTER SET cp1251", "Длинный текст Ж"),
    ("tx_latin1", "mediumtext CHARACTER SET latin1", "€ long latin1 é"),
    ("e_latin2", "enum('ő','Ű','x') CHARACTER SET latin2", "Ű"),
    ("s_sjis", "set('日','本','x') CHARACTER SET sjis", "日,本"),
];

/// Another value per column, for the changes the stream carries.
fn other(col: &str, v: &str) -> String {
    match col {
        "e_latin2" => "ő".into(),
        "s_sjis" => "本".into(),
        "c_ascii" => "other ascii".into(),
        _ => format!("{v} 2"),
    }
}

/// `'text'` for MariaDB over a utf8mb4 connection.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Every column's text on the target for row `id`.
async fn target_texts(t: &tokio_postgres::Client, id: i32) -> Vec<Option<String>> {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|(c, def, _)| {
            if def.starts_with("set(") {
                format!("array_to_string({c}, ',')")
            } else {
                format!("{c}::text")
            }
        })
        .collect();
    let row = t
        .query_one(&format!("SELECT {} FROM public.texts WHERE id = $1", cols.join(", ")), &[&id])
        .await
        .unwrap();
    (0..COLUMNS.len()).map(|i| row.get(i)).collect()
}

/// A column in every character set Ferry converts, rows written over utf8mb4 (the server
/// converts them into the column's set) and with `_charset` introducers (the set's own bytes):
/// the full load and the binlog stream write the same Unicode on the target, and cross-engine
/// verification finds no difference. A column in a set Ferry cannot convert is refused by
/// `ferry check`, naming it.
#[tokio::test]
async fn mysql_charsets_arrive_as_unicode_through_load_and_stream() {
    let (source, target, dbs) = fresh(MY, "mytexts").await;
    let db = &dbs.name;
    // A set Ferry has no decoder for: check refuses the column by name.
    my_sql(
        MY,
        &format!("CREATE TABLE {db}.dos (id int PRIMARY KEY, v varchar(10) CHARACTER SET cp852)"),
    );
    let check = ferry(&["check", "--source", &source, "--target", &target]);
    assert_ne!(check.code, 0, "{}", check.all());
    assert!(
        check.stdout.contains("dos.v") && check.stdout.contains("character set cp852"),
        "{}",
        check.all()
    );
    my_sql(MY, &format!("DROP TABLE {db}.dos"));

    let defs: Vec<String> = COLUMNS.iter().map(|(c, d, _)| format!("{c} {d}")).collect();
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
    let values = |id: i32, f: &dyn Fn(&str, &str) -> String| {
        let v: Vec<String> = COLUMNS.iter().map(|(c, _, v)| lit(&f(c, v))).collect();
        format!("({id}, {})", v.join(", "))
    };
    let first = values(1, &|_, v| v.to_string());
    // The sets' own bytes, by introducer: é, ő, Ж, 日本, 中文.
    let introduced = "INSERT INTO texts (id, c_latin1, c_latin2, c_cp1251, c_sjis, c_gbk)
                      VALUES ({id}, _latin1 x'E9', _latin2 x'F5', _cp1251 x'C6', _sjis x'93FA967B', _gbk x'D6D0CEC4')";
    my_sql(
        MY,
        &format!(
            "USE {db}; SET NAMES utf8mb4;
             CREATE TABLE texts (id int PRIMARY KEY, {});
             INSERT INTO texts (id, {}) VALUES {first};
             {};
             CREATE TABLE keyed (k varchar(20) CHARACTER SET cp1251 PRIMARY KEY, v int);
             INSERT INTO keyed VALUES ('Жук', 1), ('ёж', 2), ('Щука', 3);",
            defs.join(", "),
            names.join(", "),
            introduced.replace("{id}", "2")
        ),
    );
    let check = ferry(&["check", "--source", &source, "--target", &target]);
    assert_eq!(check.code, 0, "{}", check.all());
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]);
    wait_streaming(&target).await;
    // Through the stream: the same rows again, an update to other characters, and a delete.
    my_sql(
        MY,
        &format!(
            "USE {db}; SET NAMES utf8mb4;
             INSERT INTO texts (id, {}) VALUES {};
             {};
             BEGIN;
             INSERT INTO texts (id, {}) VALUES {};
             UPDATE texts SET {} WHERE id = 12;
             COMMIT;
             DELETE FROM texts WHERE id = 13;
             UPDATE keyed SET v = 10 WHERE k = 'Жук';
             UPDATE keyed SET k = 'Ёлка' WHERE k = 'ёж';
             DELETE FROM keyed WHERE k = 'Щука';
             INSERT INTO keyed VALUES ('Юг', 4);",
            names.join(", "),
            values(11, &|_, v| v.to_string()),
            introduced.replace("{id}", "12"),
            names.join(", "),
            values(13, &|_, v| v.to_string()),
            COLUMNS
                .iter()
                .filter(|(c, _, _)| !["c_latin1", "c_latin2", "c_cp1251", "c_sjis", "c_gbk"].contains(c))
                .map(|(c, _, v)| format!("{c} = {}", lit(&other(c, v))))
                .chain(["c_sjis = '本日'".to_string(), "c_latin1 = 'Ÿ€'".to_string()])
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    wait_caught_up(MY, &target, Duration::from_secs(120)).await;
    let t = connect(&target).await;
    let expected_first: Vec<Option<String>> = COLUMNS.iter().map(|(_, _, v)| Some(v.to_string())).collect();
    for id in [1, 11] {
        let got = target_texts(&t, id).await;
        for ((c, _, _), (g, e)) in COLUMNS.iter().zip(got.iter().zip(&expected_first)) {
            assert_eq!(g, e, "row {id}, column {c}");
        }
    }
    let introduced_expected = |id| {
        let mut e: Vec<Option<String>> = vec![None; COLUMNS.len()];
        for (c, v) in [
            ("c_latin1", "é"),
            ("c_latin2", "ő"),
            ("c_cp1251", "Ж"),
            ("c_sjis", "日本"),
            ("c_gbk", "中文"),
        ] {
            e[COLUMNS.iter().position(|x| x.0 == c).unwrap()] = Some(v.to_string());
        }
        if id == 12 {
            for (i, (c, _, v)) in COLUMNS.iter().enumerate() {
                if !["c_latin1", "c_latin2", "c_cp1251", "c_sjis", "c_gbk"].contains(c) {
                    e[i] = Some(other(c, v));
                }
            }
            e[COLUMNS.iter().position(|x| x.0 == "c_sjis").unwrap()] = Some("本日".into());
            e[COLUMNS.iter().position(|x| x.0 == "c_latin1").unwrap()] = Some("Ÿ€".into());
        }
        e
    };
    for id in [2, 12] {
        let got = target_texts(&t, id).await;
        for ((c, _, _), (g, e)) in COLUMNS.iter().zip(got.iter().zip(&introduced_expected(id))) {
            assert_eq!(g, e, "row {id}, column {c}");
        }
    }
    assert_eq!(
        lines(&t, "SELECT id::text FROM public.texts ORDER BY id::int").await,
        ["1", "2", "11", "12"]
    );
    // Keys in another set: updates and deletes find their rows by the decoded key.
    assert_eq!(
        lines(&t, "SELECT k || ':' || v FROM public.keyed ORDER BY v").await,
        ["Ёлка:2", "Юг:4", "Жук:10"]
    );
    // The source agrees, as the server converts it.
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    dispose(MY, dbs).await;
}

/// TRUNCATE of tables whose names hold a space, a dot or a backtick, named bare, quoted,
/// qualified with the database, and from a session whose default database is another: each
/// empties the target table at its place in the stream (rows written after it stay).
#[tokio::test]
async fn mysql_truncate_of_any_legal_name_empties_the_target_table() {
    let (source, target, dbs) = fresh(MY, "mytrunc").await;
    let db = &dbs.name;
    let tables = ["plain", "my table", "a.b", "odd`name", "dot.and space"];
    let q = |t: &str| format!("`{}`", t.replace('`', "``"));
    let mut setup = format!("USE {db};");
    for t in tables {
        setup.push_str(&format!(
            "CREATE TABLE {} (id int PRIMARY KEY, v varchar(20)); INSERT INTO {} VALUES (1, 'before'), (2, 'before');",
            q(t),
            q(t)
        ));
    }
    my_sql(MY, &setup);
    let m = Migrator::spawn(&["migrate", "--source", &source, "--target", &target]);
    wait_streaming(&target).await;
    my_sql(
        MY,
        &format!(
            "USE {db};
             TRUNCATE plain;
             TRUNCATE TABLE `my table`;
             TRUNCATE TABLE /* a comment */ `{db}`.`a.b`;
             USE mysql;
             TRUNCATE TABLE {db}.`odd``name`;
             TRUNCATE `{db}` . `dot.and space`;
             USE {db};"
        ),
    );
    let mut after = format!("USE {db};");
    for t in tables {
        after.push_str(&format!("INSERT INTO {} VALUES (3, 'after');", q(t)));
    }
    my_sql(MY, &after);
    wait_caught_up(MY, &target, Duration::from_secs(120)).await;
    let c = connect(&target).await;
    for t in tables {
        let rows = lines(
            &c,
            &format!(
                "SELECT id || ':' || v FROM public.{} ORDER BY id",
                ferry_core::ident::quote_ident(t)
            ),
        )
        .await;
        assert_eq!(rows, ["3:after"], "table {t}: the TRUNCATE was not applied at its place");
    }
    let verify = ferry(&["verify", "--source", &source, "--target", &target]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    dispose(MY, dbs).await;
}

/// A session that logs its writes in STATEMENT format: on a table not migrated (another
/// database, an excluded table) the stream goes on; on a migrated table it stops before the
/// statement, naming it and the fix, `ferry status` says so, and once the same change is made on
/// the target `--ddl-applied` continues after it (nothing before it lost, nothing applied twice).
#[tokio::test]
async fn mysql_statement_format_write_stops_the_stream_with_the_fix() {
    let (source, target, dbs) = fresh(MY, "mystmt").await;
    let db = &dbs.name;
    let other_db = format!("{db}_other");
    my_sql(
        MY,
        &format!(
            "USE {db};
             CREATE TABLE t (id int PRIMARY KEY, v varchar(20));
             CREATE TABLE skipped (id int PRIMARY KEY);
             INSERT INTO t VALUES (1, 'loaded');
             DROP DATABASE IF EXISTS {other_db}; CREATE DATABASE {other_db};
             CREATE TABLE {other_db}.x (id int PRIMARY KEY);"
        ),
    );
    let exclude = format!("{db}.skipped");
    let args = ["migrate", "--source", &source, "--target", &target, "--exclude", &exclude];
    let m = Migrator::spawn(&args);
    wait_streaming(&target).await;
    // Statements on what is not migrated: the stream goes on (row 2 arrives after them).
    my_sql(
        MY,
        &format!(
            "SET SESSION binlog_format = 'STATEMENT';
             INSERT INTO {other_db}.x VALUES (1);
             USE {db};
             INSERT INTO skipped VALUES (1);
             UPDATE {other_db}.x SET id = 2;
             SET SESSION binlog_format = 'ROW';
             INSERT INTO {db}.t VALUES (2, 'row format');"
        ),
    );
    wait_for_row(
        &target,
        "a row-format write after statement-format writes elsewhere",
        Duration::from_secs(60),
        "SELECT 1 FROM public.t WHERE id = 2",
    )
    .await;
    // On the migrated table: the stream stops before it.
    my_sql(
        MY,
        &format!(
            "USE {db}; INSERT INTO t VALUES (3, 'before');
             SET SESSION binlog_format = 'STATEMENT';
             UPDATE t SET v = 'by statement' WHERE id = 1;
             SET SESSION binlog_format = 'ROW';
             INSERT INTO t VALUES (4, 'after');"
        ),
    );
    let stopped = m.wait();
    assert_ne!(stopped.code, 0, "{}", stopped.all());
    for needle in [
        "logged in STATEMENT format",
        "UPDATE t SET v = 'by statement' WHERE id = 1",
        "migrated table t",
        "binlog_format",
        "--ddl-applied",
        "--overwrite",
        "SESSION_VARIABLES_ADMIN",
        "BINLOG ADMIN",
    ] {
        assert!(stopped.stderr.contains(needle), "{needle} not in:\n{}", stopped.all());
    }
    let t = connect(&target).await;
    assert_eq!(
        lines(&t, "SELECT id || ':' || v FROM public.t ORDER BY id").await,
        ["1:loaded", "2:row format", "3:before"],
        "everything before the statement is applied, nothing after"
    );
    let status = ferry(&["status", "--source", &source, "--target", &target]);
    assert!(
        status.stdout.contains("STOPPED before a write logged in STATEMENT format"),
        "{}",
        status.all()
    );
    // The same change made on the target by hand; the stream continues after the statement.
    t.batch_execute("UPDATE public.t SET v = 'by statement' WHERE id = 1")
        .await
        .unwrap();
    let mut resumed = args.to_vec();
    resumed.push("--ddl-applied");
    let m = Migrator::spawn(&resumed);
    wait_caught_up(MY, &target, Duration::from_secs(60)).await;
    assert_eq!(
        lines(&t, "SELECT id || ':' || v FROM public.t ORDER BY id").await,
        ["1:by statement", "2:row format", "3:before", "4:after"]
    );
    let verify = ferry(&["verify", "--source", &source, "--target", &target, "--exclude", &exclude]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(verify.stdout.contains(", 0 difference(s)"), "{}", verify.stdout);
    let end = m.terminate();
    assert_eq!(end.code, 0, "{}", end.all());
    my_sql(MY, &format!("DROP DATABASE {other_db}"));
    dispose(MY, dbs).await;
}

/// A `read_only` reset that fails is an error, never "writable again": Ferry's connection is
/// killed while the source is read-only, and its account may hold one connection, which another
/// session of it holds, so the reset cannot reconnect; the source stays read-only and the side
/// says so. Once the account can connect again, the reset works and reads back 0.
///
/// On FERRY_TEST_MYSQL_STMT (see `mysql_switch.rs` for why), in the `mysql-stmt-read-only`
/// test group with the other tests there that set read_only. (The account holds READ_ONLY
/// ADMIN only: CONNECTION ADMIN would lift its connection limit.)
#[tokio::test]
async fn mysql_switch_side_reports_a_failed_read_only_reset() {
    use ferry_core::switch::SwitchSide;
    const VAR: &str = "FERRY_TEST_MYSQL_STMT";
    let (_source, _target, dbs) = fresh(VAR, "myreset").await;
    let db = dbs.name.clone();
    let _writable = Writable(VAR);
    let user = format!("reset_{}", std::process::id());
    let account = format!("'{user}'@'%'");
    my_sql(
        VAR,
        &format!(
            "DROP USER IF EXISTS {account};
             CREATE USER {account} IDENTIFIED BY 'Reset-pw-1' WITH MAX_USER_CONNECTIONS 1;
             GRANT READ_ONLY ADMIN, SELECT ON *.* TO {account};"
        ),
    );
    let (host, port, _) = server(VAR);
    let ep = ferry_mysql::MyEndpoint::parse(&format!("mysql://{user}:Reset-pw-1@{host}:{port}/{db}"), None).unwrap();
    let side = ferry_mysql::switch::MySqlSide::new(&ep, "source");
    side.prepare_session().await.unwrap();
    side.set_read_only(true).await.unwrap();
    assert_eq!(my_query(VAR, "SELECT @@GLOBAL.read_only").trim(), "1");

    // Ferry's connection dies, and the account's one connection is taken by another session.
    let ferry_conn = my_query(VAR, &format!("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}'"));
    let ferry_conn = ferry_conn.trim();
    assert!(!ferry_conn.is_empty() && !ferry_conn.contains('\n'), "{ferry_conn}");
    my_sql(VAR, &format!("KILL {ferry_conn}"));
    let mut other = mariadb(VAR)
        .args(["-u", &user, "-e", "SELECT SLEEP(30)"])
        .env("MYSQL_PWD", "Reset-pw-1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the other session to take the account's connection",
        Duration::from_secs(30),
        || async {
            my_query(
                VAR,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(30)'",
            )
            .trim()
                == "1"
        },
    )
    .await;
    let failed = side.set_read_only(false).await.expect_err("the reset cannot have worked");
    let text = failed.to_string();
    assert!(text.contains("making the source writable again"), "{text}");
    assert!(text.contains("max_user_connections") || text.contains("1226"), "{text}");
    assert!(!text.contains("READ_ONLY ADMIN"), "not a privilege problem: {text}");
    assert_eq!(
        my_query(VAR, "SELECT @@GLOBAL.read_only").trim(),
        "1",
        "the source is still read-only, as the error says"
    );

    // Once the account can connect, the reset works and is read back.
    let _ = other.kill();
    let _ = other.wait();
    let sessions = format!("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}'");
    wait_for("the other session to end", Duration::from_secs(30), || {
        let sessions = &sessions;
        async move {
            let ids = my_query(VAR, sessions);
            for id in ids.lines() {
                // Gone already, or ended now: either is fine.
                let _ = mariadb(VAR).args(["-e", &format!("KILL {id}")]).output();
            }
            ids.trim().is_empty()
        }
    })
    .await;
    side.set_read_only(false).await.unwrap();
    assert_eq!(my_query(VAR, "SELECT @@GLOBAL.read_only").trim(), "0");
    my_sql(VAR, &format!("DROP USER {account}"));
    dispose(VAR, dbs).await;
}
