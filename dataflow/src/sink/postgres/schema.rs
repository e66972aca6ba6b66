//! The tables of the PostgreSQL sink, defined once: the `CREATE TABLE IF NOT EXISTS` text and
//! the check that tables found in the schema have the columns the job writes (an existing
//! table of another shape would fail on the first commit, mid-run, or worse, take rows into
//! columns that mean something else).
//!
//! Every row carries the job id, so several jobs share a schema; the layout is documented in
//! `dataflow/docs/postgres.md` (keep the two in step).

use postgres::GenericClient;

/// One table: its name, its columns (name, type as `format_type` prints it, SQL suffix) and
/// its primary key.
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, &'static str, &'static str)],
    pub key: &'static str,
}

const MONEY: &str = "numeric(20,3)";
const TS: &str = "timestamp without time zone";

/// Every table the sink writes, `progress` first.
pub const TABLES: [Table; 7] = [
    Table {
        name: "progress",
        columns: &[
            ("job_id", "text", "NOT NULL"),
            ("run", "bigint", ""),
            ("epoch", "bigint", ""),
            ("epoch_start", TS, ""),
            ("commits", "bigint", "NOT NULL DEFAULT 0"),
            (
                "updated_at",
                "timestamp with time zone",
                "NOT NULL DEFAULT now()",
            ),
        ],
        key: "job_id",
    },
    Table {
        name: "totals",
        columns: &[
            ("job_id", "text", "NOT NULL"),
            ("lines", "bigint", "NOT NULL"),
            ("units", "bigint", "NOT NULL"),
            ("revenue", MONEY, "NOT NULL"),
            ("invoices", "bigint", "NOT NULL"),
            ("customers", "bigint", "NOT NULL"),
            ("cancellation_lines", "bigint", "NOT NULL"),
            ("cancellation_value", MONEY, "NOT NULL"),
            ("late_lines", "bigint", "NOT NULL"),
            ("epoch_start", TS, "NOT NULL"),
        ],
        key: "job_id",
    },
    Table {
        name: "by_country",
        columns: &[
            ("job_id", "text", "NOT NULL"),
            ("country", "text", "NOT NULL"),
            ("lines", "bigint", "NOT NULL"),
            ("units", "bigint", "NOT NULL"),
            ("revenue", MONEY, "NOT NULL"),
            ("epoch_start", TS, "NOT NULL"),
        ],
        key: "job_id, country",
    },
    Table {
        name: "top_products",
        columns: &[
            ("job_id", "text", "NOT NULL"),
            ("rank", "integer", "NOT NULL"),
            ("stock_code", "text", "NOT NULL"),
            ("description", "text", ""),
            ("revenue", MONEY, "NOT NULL"),
            ("epoch_start", TS, "NOT NULL"),
        ],
        key: "job_id, rank",
    },
    Table {
        name: "epochs",
        columns: &[
            ("job_id", "text", "NOT NULL"),
            ("epoch_start", TS, "NOT NULL"),
            ("lines", "bigint", "NOT NULL"),
            ("units", "bigint", "NOT NULL"),
            ("revenue", MONEY, "NOT NULL"),
            ("invoices", "bigint", "NOT NULL"),
            ("late_lines", "bigint", "NOT NULL"),
            ("top_products", "jsonb", "NOT NULL"),
        ],
        key: "job_id, epoch_start",
    },
    Table {
        name: "alerts",
        columns: &[
            ("job_id", "text", "NOT NULL"),
            ("epoch_start", TS, "NOT NULL"),
            ("key", "text", "NOT NULL"),
            ("diff", "integer", "NOT NULL"),
            ("rule", "text", "NOT NULL"),
            ("alert", "jsonb", "NOT NULL"),
        ],
        // Two lines of one invoice may raise alerts with one key and different bodies.
        key: "job_id, epoch_start, key, diff, alert",
    },
    Table {
        name: "dead_letters",
        columns: &[
            ("job_id", "text", "NOT NULL"),
            ("epoch_start", TS, "NOT NULL"),
            ("partition", "integer", "NOT NULL"),
            ("offset", "bigint", "NOT NULL"),
            ("reason", "text", "NOT NULL"),
            ("detail", "text", "NOT NULL"),
            ("key", "text", ""),
            ("payload", "text", ""),
            ("payload_hex", "text", ""),
        ],
        key: "job_id, epoch_start, partition, \"offset\"",
    },
];

/// The statements that create the schema and every table missing from it.
pub fn create_statements(schema: &str) -> Vec<String> {
    let mut out = vec![format!("CREATE SCHEMA IF NOT EXISTS {schema}")];
    for t in &TABLES {
        let columns: Vec<String> = (t.columns.iter())
            .map(|(name, ty, suffix)| format!("\"{name}\" {ty} {suffix}").trim_end().to_owned())
            .collect();
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{} ({}, PRIMARY KEY ({}))",
            t.name,
            columns.join(", "),
            t.key
        ));
    }
    out
}

/// `(col, col, ...)` of table `name`, in [`TABLES`]' order, for an INSERT that does not depend
/// on the order of the columns in the table found.
pub fn column_list(name: &str) -> String {
    let table = TABLES
        .iter()
        .find(|t| t.name == name)
        .expect("one of TABLES");
    let names: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.0))
        .collect();
    format!("({})", names.join(", "))
}

/// A table of the schema that the job cannot write.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "table {schema}.{table} has no column {column} ({ty}); it was made by something else: \
         drop it (the job recreates it) or use another --pg-schema"
    )]
    Missing {
        schema: String,
        table: &'static str,
        column: &'static str,
        ty: &'static str,
    },
    #[error(
        "table {schema}.{table}: column {column} is {found}, the job writes {ty}; drop the \
         table (the job recreates it) or use another --pg-schema"
    )]
    Type {
        schema: String,
        table: &'static str,
        column: &'static str,
        found: String,
        ty: &'static str,
    },
    #[error(
        "table {schema}.{table}: column {column} is not the job's and is NOT NULL without a \
         default, so no row of the job could be inserted; drop the column or the table, or \
         use another --pg-schema"
    )]
    Extra {
        schema: String,
        table: &'static str,
        column: String,
    },
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
}

/// A column as the catalogue shows it: table, name, type, NOT NULL, has a default.
pub type Found = (String, String, String, bool, bool);

/// Reads the columns of the job's tables in `schema`.
pub fn columns(
    client: &mut impl GenericClient,
    schema: &str,
) -> Result<Vec<Found>, postgres::Error> {
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    let rows = client.query(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
         a.attnotnull, a.atthasdef \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = ANY($2) AND a.attnum > 0 AND NOT a.attisdropped",
        &[&schema, &names],
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect())
}

/// Checks the columns `found` against [`TABLES`]: the first table and column that differ.
pub fn check(schema: &str, found: &[Found]) -> Result<(), SchemaError> {
    for t in &TABLES {
        let of_table: Vec<&Found> = found.iter().filter(|f| f.0 == t.name).collect();
        for (column, ty, _) in t.columns {
            match of_table.iter().find(|f| f.1 == *column) {
                None => {
                    return Err(SchemaError::Missing {
                        schema: schema.to_owned(),
                        table: t.name,
                        column,
                        ty,
                    });
                }
                Some(f) if f.2 != *ty => {
                    return Err(SchemaError::Type {
                        schema: schema.to_owned(),
                        table: t.name,
                        column,
                        found: f.2.clone(),
                        ty,
                    });
                }
                Some(_) => {}
            }
        }
        let extra = of_table
            .iter()
            .find(|f| f.3 && !f.4 && !t.columns.iter().any(|c| c.0 == f.1));
        if let Some(f) = extra {
            return Err(SchemaError::Extra {
                schema: schema.to_owned(),
                table: t.name,
                column: f.1.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_created() -> Vec<Found> {
        TABLES
            .iter()
            .flat_map(|t| {
                (t.columns.iter()).map(|(c, ty, s)| {
                    let not_null = s.contains("NOT NULL") || t.key.contains(c);
                    (
                        t.name.into(),
                        c.to_string(),
                        ty.to_string(),
                        not_null,
                        s.contains("DEFAULT"),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn the_created_tables_pass_and_a_changed_column_is_named() {
        check("retail", &as_created()).unwrap();
        let mut changed = as_created();
        let revenue = (changed.iter_mut())
            .find(|f| f.0 == "by_country" && f.1 == "revenue")
            .unwrap();
        revenue.2 = "double precision".into();
        let e = check("retail", &changed).unwrap_err().to_string();
        assert!(
            e.starts_with("table retail.by_country: column revenue is double precision"),
            "{e}"
        );
        let mut missing = as_created();
        missing.retain(|f| !(f.0 == "epochs" && f.1 == "late_lines"));
        let e = check("retail", &missing).unwrap_err().to_string();
        assert!(
            e.starts_with("table retail.epochs has no column late_lines"),
            "{e}"
        );
        let mut extra = as_created();
        extra.push(("totals".into(), "note".into(), "text".into(), false, false));
        check("retail", &extra).unwrap();
        extra.push(("totals".into(), "owner".into(), "text".into(), true, false));
        let e = check("retail", &extra).unwrap_err().to_string();
        assert!(e.contains("column owner is not the job's"), "{e}");
    }

    #[test]
    fn statements_quote_columns_and_name_the_key() {
        let s = create_statements("shop");
        assert_eq!(s[0], "CREATE SCHEMA IF NOT EXISTS shop");
        assert_eq!(s.len(), 1 + TABLES.len());
        assert!(s.iter().any(|t| t.contains("\"offset\" bigint NOT NULL")));
        assert!(s[1].ends_with("PRIMARY KEY (job_id))"), "{}", s[1]);
    }
}
