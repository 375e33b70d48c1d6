//! SQLite lease table.
