//! A catalog view for one commit that refuses to let the commit move to a newer table.
//!
//! iceberg's `Transaction::commit` reloads the table before committing and, when another
//! writer has committed meanwhile, re-applies the append on top of it without telling.
//! The lander decides what to append from the table's marks as it checked them; appended
//! onto a table another processor has since added the same rows to, they would land
//! twice. Through this view, loading the table fails (as a commit conflict, which iceberg
//! does not retry by itself) unless its current snapshot is still the one checked, so the
//! lander's own retry checks the marks again. The append's requirements then make the
//! catalog refuse the commit if the table moves between that load and the commit.

use std::collections::HashMap;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

/// `catalog`, for a commit to a table whose current snapshot was `snapshot` when checked.
#[derive(Debug)]
pub struct Unmoved<'a> {
    pub catalog: &'a dyn Catalog,
    pub snapshot: Option<i64>,
}

#[async_trait]
impl Catalog for Unmoved<'_> {
    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        let loaded = self.catalog.load_table(table).await?;
        let now = loaded.metadata().current_snapshot_id();
        if now != self.snapshot {
            return Err(Error::new(
                ErrorKind::CatalogCommitConflicts,
                format!(
                    "table {table} moved from snapshot {:?} to {now:?} since it was checked",
                    self.snapshot
                ),
            ));
        }
        Ok(loaded)
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.catalog.update_table(commit).await
    }

    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.catalog.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.catalog.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.catalog.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.catalog.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.catalog.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.catalog.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.catalog.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.catalog.create_table(namespace, creation).await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.catalog.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.catalog.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.catalog.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.catalog.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.catalog.register_table(table, metadata_location).await
    }
}
