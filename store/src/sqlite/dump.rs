//! Dumps of a database as SQL, JSON lines or CSV (`bbsync export OBJECT
//! --as sql|json|csv [--table T]`, docs/layouts.md "Exporting databases").
//!
//! * **sql**: what the sqlite3 shell's `.dump` writes: `PRAGMA
//!   foreign_keys=OFF; BEGIN TRANSACTION;`, each table's `CREATE` statement
//!   followed by one `INSERT` per row, `sqlite_sequence` as `DELETE` plus
//!   `INSERT`s, `sqlite_stat1` after `ANALYZE sqlite_schema;`, virtual
//!   tables through `PRAGMA writable_schema`, then views, triggers and
//!   indexes, `COMMIT;`. Unlike the shell's default, the rowid of a table
//!   without an `INTEGER PRIMARY KEY` is kept (the shell's
//!   `--preserve-rowids`), and an `INSERT` names its columns when a table
//!   has generated columns or a kept rowid. Text is a quoted literal
//!   (newlines as they are); text that is not UTF-8 or holds NUL bytes is
//!   `CAST(X'..' AS TEXT)`; blobs are `X'..'`; reals are written so that
//!   they read back as the same double (`1e999` for infinity).
//! * **json**: one JSON object per row and line,
//!   `{"table":"T","row":{"col":value,...}}`, columns in table order;
//!   NULL is `null`, integers and finite reals are numbers, text is a
//!   string; a blob is `{"blob":"<hex>"}`, text that is not UTF-8
//!   `{"text_bytes":"<hex>"}`, an infinite real `{"real":"inf"}` or
//!   `{"real":"-inf"}`.
//! * **csv**: RFC 4180, one table per file, a header row with the column
//!   names, lines ending in CRLF; NULL is an empty unquoted field and the
//!   empty string is `""`; a blob is `\x` followed by its hex (PostgreSQL's
//!   bytea form).

use std::io::Write;

use rusqlite::{Connection, types::ValueRef};
use serde::Serialize;

/// Output format of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// SQL statements (like `.dump`).
    Sql,
    /// JSON lines, one row per line.
    Json,
    /// CSV, one table per file.
    Csv,
}

/// What a dump wrote.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DumpStats {
    /// Tables dumped.
    pub tables: u64,
    /// Rows dumped.
    pub rows: u64,
}

/// A dump failed: SQLite could not read the database, or writing failed.
#[derive(Debug)]
pub enum DumpError {
    /// Reading the database.
    Sqlite(rusqlite::Error),
    /// Writing the output.
    Io(std::io::Error),
    /// The requested table does not exist (the existing ones are listed).
    NoTable(String, Vec<String>),
}

impl From<rusqlite::Error> for DumpError {
    fn from(e: rusqlite::Error) -> Self {
        DumpError::Sqlite(e)
    }
}

impl From<std::io::Error> for DumpError {
    fn from(e: std::io::Error) -> Self {
        DumpError::Io(e)
    }
}

type R<T> = std::result::Result<T, DumpError>;

/// One column of a table.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// `PRAGMA table_xinfo`'s `hidden`: 0 normal, 1 hidden (virtual
    /// tables), 2 and 3 generated.
    hidden: i64,
    decl: String,
    pk: i64,
}

/// A table of the schema, as the dump needs it.
#[derive(Debug, Clone)]
pub struct Table {
    /// Name.
    pub name: String,
    /// Its `CREATE` statement.
    pub sql: String,
    columns: Vec<Column>,
    without_rowid: bool,
}

impl Table {
    fn is_virtual(&self) -> bool {
        self.sql
            .get(..20)
            .is_some_and(|s| s.eq_ignore_ascii_case("CREATE VIRTUAL TABLE"))
    }

    /// The columns a row has in a dump (generated and hidden ones left out).
    fn data_columns(&self) -> Vec<&Column> {
        self.columns.iter().filter(|c| c.hidden == 0).collect()
    }

    /// The name under which a rowid is kept, when the table has a rowid
    /// that no `INTEGER PRIMARY KEY` column holds.
    fn kept_rowid(&self) -> Option<&'static str> {
        if self.without_rowid || self.is_virtual() || self.name.starts_with("sqlite_") {
            return None;
        }
        let pks: Vec<&Column> = self.columns.iter().filter(|c| c.pk > 0).collect();
        if pks.len() == 1 && pks[0].decl.eq_ignore_ascii_case("INTEGER") {
            return None;
        }
        ["rowid", "_rowid_", "oid"].into_iter().find(|alias| {
            !self
                .columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(alias))
        })
    }
}

/// Quotes an identifier with double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The tables of the database in dump order (`sqlite_sequence` last),
/// including SQLite's own tables that a dump writes (`sqlite_sequence`,
/// `sqlite_stat1`...).
pub fn tables(conn: &Connection) -> rusqlite::Result<Vec<Table>> {
    let mut st = conn.prepare(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL \
         ORDER BY name = 'sqlite_sequence', rowid",
    )?;
    let list = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(list.len());
    for (name, sql) in list {
        let mut cols = conn.prepare(&format!(
            "SELECT name, hidden, type, pk FROM pragma_table_xinfo({})",
            quote_literal(&name)
        ))?;
        let columns = cols
            .query_map([], |r| {
                Ok(Column {
                    name: r.get(0)?,
                    hidden: r.get(1)?,
                    decl: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    pk: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let without_rowid: bool = conn
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [&name],
                |r| r.get::<_, i64>(0),
            )
            .map(|wr| wr != 0)
            .unwrap_or(false);
        out.push(Table {
            name,
            sql,
            columns,
            without_rowid,
        });
    }
    Ok(out)
}

/// The names of the tables a `--table` may name (SQLite's internal tables
/// and virtual tables left out).
pub fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    Ok(tables(conn)?
        .into_iter()
        .filter(|t| !t.name.starts_with("sqlite_") && !t.is_virtual())
        .map(|t| t.name)
        .collect())
}

fn select_table(conn: &Connection, table: Option<&str>) -> R<Vec<Table>> {
    let all = tables(conn)?;
    match table {
        None => Ok(all),
        Some(t) => match all.iter().find(|x| x.name == t) {
            Some(x) => Ok(vec![x.clone()]),
            None => Err(DumpError::NoTable(t.to_string(), table_names(conn)?)),
        },
    }
}

/// A SQL string literal.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A real as SQL text that reads back as the same double.
fn sql_real(r: f64) -> String {
    if r.is_nan() {
        "NULL".into()
    } else if r.is_infinite() {
        if r > 0.0 {
            "1e999".into()
        } else {
            "-1e999".into()
        }
    } else {
        // Debug is the shortest representation that round-trips, and always
        // has a '.' or an exponent, so SQLite reads it as a REAL.
        format!("{r:?}")
    }
}

fn sql_value(v: ValueRef<'_>, out: &mut Vec<u8>) {
    match v {
        ValueRef::Null => out.extend_from_slice(b"NULL"),
        ValueRef::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        ValueRef::Real(r) => out.extend_from_slice(sql_real(r).as_bytes()),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) if !s.contains('\0') => out.extend_from_slice(quote_literal(s).as_bytes()),
            _ => {
                out.extend_from_slice(b"CAST(X'");
                out.extend_from_slice(hex::encode(t).as_bytes());
                out.extend_from_slice(b"' AS TEXT)");
            }
        },
        ValueRef::Blob(b) => {
            out.extend_from_slice(b"X'");
            out.extend_from_slice(hex::encode(b).as_bytes());
            out.push(b'\'');
        }
    }
}

/// Runs `SELECT` over a table's data columns (with the kept rowid first),
/// passing each row's values to `f`.
fn for_rows(
    conn: &Connection,
    t: &Table,
    with_rowid: bool,
    mut f: impl FnMut(&[ValueRef<'_>]) -> R<()>,
) -> R<u64> {
    let mut cols: Vec<String> = Vec::new();
    if with_rowid && let Some(alias) = t.kept_rowid() {
        cols.push(alias.to_string());
    }
    cols.extend(t.data_columns().iter().map(|c| quote_ident(&c.name)));
    if cols.is_empty() {
        return Ok(0);
    }
    let mut st = conn.prepare(&format!(
        "SELECT {} FROM {}",
        cols.join(","),
        quote_ident(&t.name)
    ))?;
    let n = cols.len();
    let mut rows = st.query([])?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let vals = (0..n)
            .map(|i| row.get_ref(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        f(&vals)?;
        count += 1;
    }
    Ok(count)
}

/// Writes the SQL dump of the database (or of one table, with its indexes
/// and triggers) to `out`.
pub fn dump_sql(conn: &Connection, table: Option<&str>, out: &mut dyn Write) -> R<DumpStats> {
    let tables = select_table(conn, table)?;
    let mut stats = DumpStats::default();
    out.write_all(b"PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n")?;
    let mut writable_schema = false;
    let mut line = Vec::with_capacity(4096);
    for t in &tables {
        let name = t.name.as_str();
        if name == "sqlite_sequence" {
            out.write_all(b"DELETE FROM sqlite_sequence;\n")?;
        } else if name.len() == 12 && name.starts_with("sqlite_stat") {
            out.write_all(b"ANALYZE sqlite_schema;\n")?;
        } else if name.starts_with("sqlite_") {
            continue;
        } else if t.is_virtual() {
            if !writable_schema {
                out.write_all(b"PRAGMA writable_schema=ON;\n")?;
                writable_schema = true;
            }
            writeln!(
                out,
                "INSERT INTO sqlite_schema(type,name,tbl_name,rootpage,sql)VALUES('table',{},{},0,{});",
                quote_literal(name),
                quote_literal(name),
                quote_literal(&t.sql)
            )?;
            stats.tables += 1;
            continue;
        } else {
            writeln!(out, "{};", t.sql)?;
        }
        stats.tables += 1;
        let data = t.data_columns();
        let rowid = t.kept_rowid();
        let mut head = format!("INSERT INTO {}", quote_ident(name));
        if rowid.is_some() || data.len() != t.columns.len() {
            let mut names: Vec<String> = rowid.map(|r| r.to_string()).into_iter().collect();
            names.extend(data.iter().map(|c| quote_ident(&c.name)));
            head.push_str(&format!("({})", names.join(",")));
        }
        head.push_str(" VALUES(");
        stats.rows += for_rows(conn, t, true, |vals| {
            line.clear();
            line.extend_from_slice(head.as_bytes());
            for (i, v) in vals.iter().enumerate() {
                if i > 0 {
                    line.push(b',');
                }
                sql_value(*v, &mut line);
            }
            line.extend_from_slice(b");\n");
            out.write_all(&line)?;
            Ok(())
        })?;
    }
    let mut st = conn.prepare(
        "SELECT sql, tbl_name FROM sqlite_schema WHERE sql IS NOT NULL \
         AND type IN ('index', 'trigger', 'view') ORDER BY type COLLATE NOCASE DESC, rowid",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let sql: String = r.get(0)?;
        let tbl: String = r.get(1)?;
        if table.is_none_or(|t| t == tbl) {
            writeln!(out, "{sql};")?;
        }
    }
    if writable_schema {
        out.write_all(b"PRAGMA writable_schema=OFF;\n")?;
    }
    out.write_all(b"COMMIT;\n")?;
    Ok(stats)
}

fn json_value(v: ValueRef<'_>, out: &mut String) {
    match v {
        ValueRef::Null => out.push_str("null"),
        ValueRef::Integer(i) => out.push_str(&i.to_string()),
        ValueRef::Real(r) => match serde_json::Number::from_f64(r) {
            Some(n) => out.push_str(&n.to_string()),
            None if r.is_nan() => out.push_str("null"),
            None => out.push_str(if r > 0.0 {
                "{\"real\":\"inf\"}"
            } else {
                "{\"real\":\"-inf\"}"
            }),
        },
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => out.push_str(&json_string(s)),
            Err(_) => {
                out.push_str("{\"text_bytes\":\"");
                out.push_str(&hex::encode(t));
                out.push_str("\"}");
            }
        },
        ValueRef::Blob(b) => {
            out.push_str("{\"blob\":\"");
            out.push_str(&hex::encode(b));
            out.push_str("\"}");
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Writes every row (of every table, or of one) as a line of JSON.
pub fn dump_json(conn: &Connection, table: Option<&str>, out: &mut dyn Write) -> R<DumpStats> {
    let tables = select_table(conn, table)?;
    let mut stats = DumpStats::default();
    let mut line = String::with_capacity(4096);
    for t in tables
        .iter()
        .filter(|t| table.is_some() || !(t.name.starts_with("sqlite_") || t.is_virtual()))
    {
        stats.tables += 1;
        let prefix = format!("{{\"table\":{},\"row\":{{", json_string(&t.name));
        let keys: Vec<String> = t
            .data_columns()
            .iter()
            .map(|c| format!("{}:", json_string(&c.name)))
            .collect();
        stats.rows += for_rows(conn, t, false, |vals| {
            line.clear();
            line.push_str(&prefix);
            for (i, v) in vals.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(&keys[i]);
                json_value(*v, &mut line);
            }
            line.push_str("}}\n");
            out.write_all(line.as_bytes())?;
            Ok(())
        })?;
    }
    Ok(stats)
}

fn csv_field(bytes: &[u8], out: &mut Vec<u8>) {
    let quote = bytes.is_empty()
        || bytes
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
    if !quote {
        out.extend_from_slice(bytes);
        return;
    }
    out.push(b'"');
    for &b in bytes {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn csv_value(v: ValueRef<'_>, out: &mut Vec<u8>) {
    match v {
        ValueRef::Null => {}
        ValueRef::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        ValueRef::Real(r) => out.extend_from_slice(
            (if r.is_infinite() {
                if r > 0.0 {
                    "inf".to_string()
                } else {
                    "-inf".to_string()
                }
            } else {
                format!("{r:?}")
            })
            .as_bytes(),
        ),
        ValueRef::Text(t) => csv_field(t, out),
        ValueRef::Blob(b) => {
            out.extend_from_slice(b"\\x");
            out.extend_from_slice(hex::encode(b).as_bytes());
        }
    }
}

/// Writes one table as CSV.
pub fn dump_csv(conn: &Connection, table: &str, out: &mut dyn Write) -> R<DumpStats> {
    let t = select_table(conn, Some(table))?.remove(0);
    let mut line = Vec::with_capacity(4096);
    for (i, c) in t.data_columns().iter().enumerate() {
        if i > 0 {
            line.push(b',');
        }
        csv_field(c.name.as_bytes(), &mut line);
    }
    line.extend_from_slice(b"\r\n");
    out.write_all(&line)?;
    let rows = for_rows(conn, &t, false, |vals| {
        line.clear();
        for (i, v) in vals.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            csv_value(*v, &mut line);
        }
        line.extend_from_slice(b"\r\n");
        out.write_all(&line)?;
        Ok(())
    })?;
    Ok(DumpStats { tables: 1, rows })
}

/// The file name of a table's CSV file: the table name with every byte
/// outside `A-Z a-z 0-9 - _ .` (and a leading `.`) written as `%XX`, plus
/// `.csv`.
pub fn csv_file_name(table: &str) -> String {
    let mut s = String::new();
    for (i, &b) in table.as_bytes().iter().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str(".csv");
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE posts(id INTEGER PRIMARY KEY AUTOINCREMENT, board TEXT NOT NULL, body TEXT, score REAL, raw BLOB);
             CREATE TABLE \"odd \"\"name\"\"\"(a, b);
             CREATE TABLE tags(post INTEGER, tag TEXT, PRIMARY KEY(post, tag)) WITHOUT ROWID;
             CREATE TABLE gen(a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL);
             CREATE INDEX posts_board ON posts(board);
             CREATE VIEW v AS SELECT id, board FROM posts;
             CREATE TRIGGER t AFTER DELETE ON posts BEGIN DELETE FROM tags WHERE post = old.id; END;
             INSERT INTO posts(board, body, score, raw) VALUES
               ('general', 'it''s
multi-line, \"quoted\"', 1.5, X'00ff'),
               ('general', NULL, 1e300, NULL),
               ('tech', '', -0.1, X''),
               ('tech', 'ünïcödé', 3.0, NULL);
             INSERT INTO posts(board, body, score) VALUES ('x', CAST(X'41004200' AS TEXT), 1e999);
             INSERT INTO \"odd \"\"name\"\"\"(rowid, a, b) VALUES (7, 1, 'one'), (42, 2.25, NULL);
             INSERT INTO tags VALUES (1, 'a'), (1, 'b'), (2, 'c');
             INSERT INTO gen(a) VALUES (1), (2);
             DELETE FROM posts WHERE id = 3;",
        )
        .unwrap();
        c
    }

    fn rows(c: &Connection, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        st.query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect()
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap()
    }

    fn everything(c: &Connection) -> Vec<Vec<Vec<rusqlite::types::Value>>> {
        [
            "SELECT rowid, * FROM posts ORDER BY rowid",
            "SELECT rowid, * FROM \"odd \"\"name\"\"\" ORDER BY rowid",
            "SELECT * FROM tags ORDER BY 1, 2",
            "SELECT a, b FROM gen ORDER BY rowid",
            "SELECT name, seq FROM sqlite_sequence",
            "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name",
        ]
        .iter()
        .map(|q| rows(c, q))
        .collect()
    }

    #[test]
    fn the_sql_dump_loads_into_the_same_rows_and_schema() {
        let src = sample();
        let mut out = Vec::new();
        let stats = dump_sql(&src, None, &mut out).unwrap();
        assert_eq!(
            stats.rows,
            4 + 2 + 3 + 2 + 1,
            "{}",
            String::from_utf8_lossy(&out)
        );
        let fresh = Connection::open_in_memory().unwrap();
        fresh
            .execute_batch(std::str::from_utf8(&out).unwrap())
            .unwrap();
        assert_eq!(everything(&src), everything(&fresh));
        // The kept rowids of the table without an INTEGER PRIMARY KEY.
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "INSERT INTO \"odd \"\"name\"\"\"(rowid,\"a\",\"b\") VALUES(42,2.25,NULL);"
            ),
            "{text}"
        );
        assert!(text.contains("CAST(X'41004200' AS TEXT)"), "{text}");
        assert!(text.contains(",1e999,"), "{text}");
        assert!(text.starts_with("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"));
        assert!(text.ends_with("COMMIT;\n"));
    }

    #[test]
    fn one_table_dumps_with_its_indexes_and_triggers_only() {
        let src = sample();
        let mut out = Vec::new();
        dump_sql(&src, Some("posts"), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("CREATE INDEX posts_board"));
        assert!(text.contains("CREATE TRIGGER t"));
        assert!(!text.contains("CREATE TABLE tags"));
        assert!(!text.contains("CREATE VIEW"));
        match dump_sql(&src, Some("nope"), &mut Vec::new()) {
            Err(DumpError::NoTable(t, names)) => {
                assert_eq!(t, "nope");
                assert!(names.contains(&"posts".to_string()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_lines_carry_every_value_and_type() {
        let src = sample();
        let mut out = Vec::new();
        let stats = dump_json(&src, Some("posts"), &mut out).unwrap();
        assert_eq!(stats.rows, 4);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["table"], "posts");
        assert_eq!(lines[0]["row"]["body"], "it's\nmulti-line, \"quoted\"");
        assert_eq!(lines[0]["row"]["raw"]["blob"], "00ff");
        assert_eq!(lines[0]["row"]["score"], 1.5);
        assert!(lines[1]["row"]["body"].is_null());
        assert_eq!(lines[1]["row"]["score"], 1e300);
        assert_eq!(lines[3]["row"]["score"]["real"], "inf");
        assert_eq!(lines[3]["row"]["body"], "A\u{0}B\u{0}");
        // Column order is the table's.
        let first = serde_json::to_string(&lines[0]["row"]).unwrap();
        assert!(first.find("\"board\"") < first.find("\"body\""));
    }

    #[test]
    fn csv_keeps_null_apart_from_the_empty_string() {
        let src = sample();
        let mut out = Vec::new();
        dump_csv(&src, "posts", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "id,board,body,score,raw");
        assert_eq!(lines[2], "2,general,,1e300,");
        assert!(
            text.contains("\"it's\nmulti-line, \"\"quoted\"\"\",1.5,\\x00ff\r\n"),
            "{text}"
        );
        assert_eq!(csv_file_name("a/b c"), "a%2Fb%20c.csv");
        assert_eq!(csv_file_name(".hidden"), "%2Ehidden.csv");
    }
}
