//! Dumps of stored database objects (`bbsync export OBJECT --as ...`).

use std::{fs, io::Write, path::Path};

use bbsync_protocol::{ObjectId, Shape};

use super::{
    TempFile,
    dump::{self, DumpError, DumpFormat, DumpStats},
    has_header, open_private, temp_path,
};
use crate::{
    Store,
    error::{Context, Result, StoreError},
};

/// A decrypted copy of a stored database object, in a private temp file.
struct Decrypted {
    file: TempFile,
    label: String,
}

fn dump_err(label: &str, e: DumpError) -> StoreError {
    match e {
        DumpError::Sqlite(e) => super::db_error(&format!("database {label}"), e),
        DumpError::Io(e) => StoreError::Io {
            context: format!("writing the dump of {label}"),
            source: e,
        },
        DumpError::NoTable(t, names) => StoreError::Invalid(format!(
            "database {label} has no table {t:?} (its tables: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )),
    }
}

impl Store {
    /// Decrypts a stored object that must be a SQLite database (a file
    /// object starting with the header) into a private temp file.
    fn decrypt_database(&self, id: &ObjectId) -> Result<Decrypted> {
        let o = self.open_object(id)?;
        let label = format!("{}:{}", o.state.kind, o.state.name);
        if o.content.shape != Shape::File {
            return Err(StoreError::Invalid(format!(
                "{label} is a directory, not a SQLite database"
            )));
        }
        let file = TempFile::create(temp_path(self.dir(), "dump")?)?;
        let mut out = std::io::BufWriter::new(
            fs::OpenOptions::new()
                .write(true)
                .open(file.path())
                .ctx(|| format!("opening {}", file.path().display()))?,
        );
        let mut first = true;
        self.read_open(&o, |data| {
            if first && !has_header(data) {
                return Err(StoreError::Invalid(format!(
                    "{label} is not a SQLite database (its content does not start with the SQLite header)"
                )));
            }
            first = false;
            out.write_all(data)
                .ctx(|| format!("writing {}", file.path().display()))
        })?;
        if first {
            return Err(StoreError::Invalid(format!(
                "{label} is not a SQLite database (it is empty)"
            )));
        }
        out.flush()
            .ctx(|| format!("writing {}", file.path().display()))?;
        Ok(Decrypted { file, label })
    }

    /// Writes a stored database object (never the live file) as SQL or JSON
    /// lines, or one table as CSV, to `out` (see [`dump`]).
    pub fn dump_database(
        &self,
        id: &ObjectId,
        format: DumpFormat,
        table: Option<&str>,
        out: &mut dyn Write,
    ) -> Result<DumpStats> {
        let d = self.decrypt_database(id)?;
        let conn = open_private(d.file.path())
            .map_err(|e| super::db_error(&format!("database {}", d.label), e))?;
        let r = match (format, table) {
            (DumpFormat::Sql, t) => dump::dump_sql(&conn, t, out),
            (DumpFormat::Json, t) => dump::dump_json(&conn, t, out),
            (DumpFormat::Csv, Some(t)) => dump::dump_csv(&conn, t, out),
            (DumpFormat::Csv, None) => {
                return Err(StoreError::Invalid(
                    "CSV holds one table: give --table T, or a directory to get one file per table"
                        .into(),
                ));
            }
        };
        r.map_err(|e| dump_err(&d.label, e))
    }

    /// Writes every table of a stored database object as CSV into `dir`
    /// (new or empty), one `<table>.csv` per table
    /// ([`dump::csv_file_name`]), each through a temp file and a rename.
    pub fn dump_database_csv_dir(&self, id: &ObjectId, dir: &Path) -> Result<DumpStats> {
        let d = self.decrypt_database(id)?;
        let what = format!("database {}", d.label);
        let conn = open_private(d.file.path()).map_err(|e| super::db_error(&what, e))?;
        let names = dump::table_names(&conn).map_err(|e| super::db_error(&what, e))?;
        crate::export::prepare_empty_dir(dir)?;
        let mut stats = DumpStats::default();
        for t in names {
            let target = dir.join(dump::csv_file_name(&t));
            let tmp = super::FileOut::temp_path(&target);
            let r = (|| -> Result<DumpStats> {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .ctx(|| format!("creating {}", tmp.display()))?;
                let mut w = std::io::BufWriter::new(f);
                let s = dump::dump_csv(&conn, &t, &mut w).map_err(|e| dump_err(&d.label, e))?;
                w.flush().ctx(|| format!("writing {}", tmp.display()))?;
                fs::rename(&tmp, &target).ctx(|| format!("renaming into {}", target.display()))?;
                Ok(s)
            })();
            match r {
                Ok(s) => {
                    stats.tables += s.tables;
                    stats.rows += s.rows;
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        Ok(stats)
    }
}
