//! Direct access to the SQL catalog's table pointers: the compare-and-swap every commit of
//! this processor is published with, and a cheap look at where a table points now.
//!
//! It is the same statement the SQL catalog itself runs for every commit —
//! `UPDATE iceberg_tables SET metadata_location = new ... WHERE metadata_location = old` —
//! so a commit that lost a race changes nothing and is reported as such.

use iceberg::TableIdent;
use sqlx::{AnyPool, Row};

use crate::lake::CatalogSettings;

/// Connection to the catalog database, for the compare-and-swap.
#[derive(Clone)]
pub struct CatalogSwap {
    pool: AnyPool,
    catalog: String,
    dollar: bool,
}

impl CatalogSwap {
    /// Connect to the catalog database of a processor config.
    pub async fn open(settings: &CatalogSettings) -> Result<Self, sqlx::Error> {
        Self::connect(&settings.uri, &settings.name).await
    }

    /// Connect to the catalog database at `uri` (the same one the catalog uses).
    pub async fn connect(uri: &str, catalog: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(uri)
            .await?;
        Ok(Self {
            pool,
            catalog: catalog.to_string(),
            dollar: uri.starts_with("postgres"),
        })
    }

    /// `?` placeholders as the database wants them.
    fn bind_style(&self, sql: &str) -> String {
        if !self.dollar {
            return sql.to_string();
        }
        let mut n = 0;
        sql.chars()
            .map(|c| {
                if c == '?' {
                    n += 1;
                    format!("${n}")
                } else {
                    c.to_string()
                }
            })
            .collect()
    }

    /// Point `table` at `new` if it still points at `old`; false when it does not.
    pub async fn compare_and_swap(
        &self,
        table: &TableIdent,
        old: &str,
        new: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = self.bind_style(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
             AND metadata_location = ?",
        );
        let done = sqlx::query(&sql)
            .bind(new)
            .bind(old)
            .bind(&self.catalog)
            .bind(table.namespace().join("."))
            .bind(table.name())
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The metadata file `table` points at now (None if the table is gone): one indexed
    /// read, so a writer can tell whether its table moved without reading any file.
    pub async fn location(&self, table: &TableIdent) -> Result<Option<String>, sqlx::Error> {
        let sql = self.bind_style(
            "SELECT metadata_location FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        );
        let row = sqlx::query(&sql)
            .bind(&self.catalog)
            .bind(table.namespace().join("."))
            .bind(table.name())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<Option<String>, _>(0))
            .transpose()
            .map(Option::flatten)
    }
}
