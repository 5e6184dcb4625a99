//! etcd's own files, read natively: the bbolt db ([`bbolt`], [`schema`]), the WAL and `.snap`
//! ([`wal`]), etcd's keyspace hash ([`hashkv`]), whether etcd would boot a data dir
//! ([`bootcheck`]), and the data dir as a whole
//! around a restore: locks, durable swap, directories moved aside ([`datadir`]).

pub mod bbolt;
pub mod bootcheck;
pub mod datadir;
pub mod hashkv;
pub mod schema;
pub mod wal;
