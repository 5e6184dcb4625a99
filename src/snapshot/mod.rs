//! Taking backups: a verified full snapshot streamed into the store ([`full`]) and named by the
//! revision of its data ([`revision`]), delta snapshots from etcd's watch ([`delta`]), garbage
//! collection ([`gc`]), compaction of a chain into one full ([`compact`]), and the scheduled job
//! that runs them ([`job`]).

pub mod compact;
pub mod delta;
pub mod full;
pub mod gc;
pub mod health;
pub mod job;
pub mod revision;
